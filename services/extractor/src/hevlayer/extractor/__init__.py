"""The extract worker (a deployable): the Object Lane's CPU workers."""
