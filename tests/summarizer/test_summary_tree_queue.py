"""The Job Lane's state machine: DirTree readiness and the SummaryQueue round robin.

Property tests drive several jobs' trees through the queue with a random
interleaving of pops and completions (and some failures), as concurrent fold
workers would, and check the invariants:

- bottom-up: a directory is popped only when all its sub-directories are done;
- every directory is popped, and done, exactly once; every job finishes;
- within a job the deepest ready directory pops first;
- round robin: a job with ready directories waits for at most one pop of
  each other job, so no job waits for another to drain.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hevlayer.summarizer.queue import SummaryQueue
from hevlayer.summarizer.tree import (
    DirState,
    DirTree,
    ObjectSpec,
    SummaryRecord,
    TreeError,
    check_path,
    parent_of,
)

DIR_NAMES = st.sampled_from(["a", "b", "c", "d"])
FILE_NAMES = st.sampled_from(["main.py", "README.md", "x.txt", "y.go"])
FILE_PATHS = st.builds(
    lambda dirs, leaf: "/".join([*dirs, leaf]), st.lists(DIR_NAMES, min_size=0, max_size=5), FILE_NAMES
)
TREES = st.lists(FILE_PATHS, min_size=0, max_size=30)


def _record(path: str) -> SummaryRecord:
    return SummaryRecord(
        text=f"summary of {path!r}", cache_key="k", model="m", child_count=0, document_id="d"
    )


def _tree(paths: list[str]) -> DirTree:
    tree = DirTree()
    tree.add([ObjectSpec(path=p) for p in paths])
    return tree


@settings(max_examples=150, deadline=None)
@given(jobs=st.lists(TREES, min_size=1, max_size=4), concurrency=st.integers(1, 4), data=st.data())
def test_bottom_up_exactly_once_and_round_robin(
    jobs: list[list[str]], concurrency: int, data: st.DataObject
) -> None:
    trees = {f"job{i}": _tree(paths) for i, paths in enumerate(jobs)}
    queue = SummaryQueue()
    queued: dict[str, dict[str, int]] = defaultdict(dict)  # job -> path -> depth, mirror of the heaps
    waits: dict[str, int] = defaultdict(int)  # pops of other jobs since the job was last served
    popped: set[tuple[str, str]] = set()
    in_flight: list[tuple[str, str]] = []

    def push(job_id: str, path: str, depth: int) -> None:
        if not queued[job_id]:
            waits[job_id] = 0
        queued[job_id][path] = depth
        queue.push(job_id, path, depth)

    for job_id, tree in trees.items():
        for node in tree.complete_enumeration():
            push(job_id, node.path, node.depth)

    while len(queue) or in_flight:
        can_pop = len(queue) > 0 and len(in_flight) < concurrency
        if can_pop and (not in_flight or data.draw(st.booleans(), label="pop")):
            item = queue.pop()
            assert item is not None
            tree = trees[item.job_id]
            node = tree.dirs[item.path]
            # Bottom-up: every sub-directory is done before the parent is popped.
            assert node.state is DirState.READY
            assert all(tree.dirs[sub].done for sub in node.subdirs)
            # Exactly once.
            assert (item.job_id, item.path) not in popped
            popped.add((item.job_id, item.path))
            # Deepest first within the job.
            assert item.depth == max(queued[item.job_id].values())
            del queued[item.job_id][item.path]
            # Round robin: nobody with ready work waits more than one turn of each other job.
            for other, paths in queued.items():
                if other != item.job_id and paths:
                    waits[other] += 1
                    assert waits[other] <= len(trees) - 1, (other, waits[other])
            waits[item.job_id] = 0
            in_flight.append((item.job_id, item.path))
        else:
            index = data.draw(st.integers(0, len(in_flight) - 1), label="complete")
            job_id, path = in_flight.pop(index)
            tree = trees[job_id]
            if data.draw(st.integers(0, 9), label="fail") == 0:
                parent = tree.mark_failed(path, "boom")
            else:
                parent = tree.mark_summarized(path, _record(path))
            if parent is not None:
                assert parent.path == parent_of(path)
                push(job_id, parent.path, parent.depth)

    for job_id, tree in trees.items():
        assert tree.finished
        assert {p for j, p in popped if j == job_id} == set(tree.dirs)
        assert tree.summarized + tree.failed == len(tree.dirs)


@settings(max_examples=100, deadline=None)
@given(paths=TREES)
def test_tree_shape(paths: list[str]) -> None:
    tree = _tree(paths)
    assert set(tree.files) == set(paths)
    # Every ancestor of every file is a directory, linked to its parent.
    for path in paths:
        parent = parent_of(path)
        assert parent is not None
        assert path in tree.dirs[parent].files
        while parent != "":
            assert parent in tree.dirs
            grand = parent_of(parent)
            assert grand is not None
            assert parent in tree.dirs[grand].subdirs
            parent = grand
    # Files never gate: at enumeration end exactly the directories without sub-directories are ready.
    ready = {node.path for node in tree.complete_enumeration()}
    assert ready == {p for p, node in tree.dirs.items() if not node.subdirs}


def test_a_large_deep_job_does_not_starve_a_shallow_one() -> None:
    big = _tree([f"{'/'.join(['d'] * depth)}/x{leaf}/f.py" for depth in range(1, 8) for leaf in range(20)])
    small = _tree(["README.md"])
    queue = SummaryQueue()
    for node in big.complete_enumeration():
        queue.push("big", node.path, node.depth)
    before = len(queue)
    for node in small.complete_enumeration():
        queue.push("small", node.path, node.depth)
    served = [queue.pop() for _ in range(2)]
    assert [item.job_id for item in served if item is not None] == ["big", "small"]
    assert len(queue) == before - 1
    # Depth order inside the big job: the deepest ready directories come first.
    depths = []
    while (item := queue.pop()) is not None:
        depths.append(item.depth)
    assert depths == sorted(depths, reverse=True)


def test_drop_forgets_a_job() -> None:
    queue = SummaryQueue()
    queue.push("a", "x", 1)
    queue.push("a", "y", 2)
    queue.push("b", "z", 1)
    assert queue.drop("a") == 2
    assert queue.drop("a") == 0
    assert queue.jobs() == ["b"]
    item = queue.pop()
    assert item is not None
    assert item.job_id == "b"
    assert queue.pop() is None


def test_resent_object_replaces_and_batches_are_atomic() -> None:
    tree = DirTree()
    tree.add([ObjectSpec("src/a.py", text="one"), ObjectSpec("src/a.py", text="two")])
    assert tree.files["src/a.py"].text == "two"
    tree.add([ObjectSpec("src/a.py", text="three")])
    assert len(tree.files) == 1
    assert tree.files["src/a.py"].text == "three"
    with pytest.raises(TreeError) as caught:
        tree.add([ObjectSpec("docs/x.md"), ObjectSpec("src/a.py/b.py")])
    assert (caught.value.index, caught.value.attribute) == (1, "path")
    assert "docs" not in tree.dirs  # nothing of the rejected batch was applied
    with pytest.raises(TreeError):
        tree.add([ObjectSpec("src")])  # a directory cannot become a file


@pytest.mark.parametrize("path", ["", "/abs", "a//b", "a/", "../x", "a/../b", "a/./b", "a\x00b", "x" * 1025])
def test_invalid_paths(path: str) -> None:
    assert check_path(path) is not None
    with pytest.raises(TreeError):
        DirTree().add([ObjectSpec(path)])


def test_flat_and_empty_trees_fold_the_root_alone() -> None:
    for tree in (_tree([]), _tree(["a.txt", "b.txt"])):
        ready = tree.complete_enumeration()
        assert [node.path for node in ready] == [""]
        assert tree.mark_summarized("", _record("")) is None
        assert tree.finished
