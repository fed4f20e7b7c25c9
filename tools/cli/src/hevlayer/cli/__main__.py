"""``python -m hevlayer.cli``: the ``hevlayer`` command."""

from hevlayer.cli.main import main

if __name__ == "__main__":
    main()
