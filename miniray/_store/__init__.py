"""The node-local object store: a shared-memory arena and its allocator.

``allocator`` is a pure data structure (ranges in, ranges out) owned by the
node daemon; ``arena`` maps the shared-memory file into a process and hands
out zero-copy views that pin their range while user code holds them.
"""
