"""A worker's stdout/stderr (``_task_output.TaskOutput``) and the driver's
side (``show``), without processes: what is sent, when, and how it is shown."""
from __future__ import annotations

import io

import pytest

from miniray._protocol import M
from miniray._task_output import STDERR, STDOUT, TaskOutput, prefix_lines, show

TID = b"t" * 14


class Stream:
    """A TaskOutput over a StringIO; ``sent`` collects OUTPUT messages."""

    def __init__(self, number=STDOUT, fail=False):
        self.context = (1, "f", TID)
        self.sent = []
        self.local = io.StringIO()

        def send(msg):
            if fail:
                raise OSError("the node is gone")
            self.sent.append(msg)
        self.out = TaskOutput(self.local, number, lambda: self.context, send,
                              (42, "node-a", "10.0.0.2"))

    def texts(self):
        return [(m[1], m[3], m[4]) for m in self.sent]


def test_whole_lines_go_in_one_message_per_write_and_partial_lines_wait():
    s = Stream()
    s.out.write("a\nb\npart")
    assert s.sent == [(M.OUTPUT, 1, STDOUT, "a\nb\n", False, ("f", 42, "node-a", "10.0.0.2"),
                       TID)]
    s.out.write("ial")
    assert len(s.sent) == 1
    print("!", file=s.out)       # print writes "!" then "\n"
    assert s.texts()[1:] == [(1, "partial!\n", False)]


def test_flush_sends_a_partial_line_and_the_rest_continues_it():
    s = Stream()
    s.out.write("progress")
    s.out.flush()
    s.out.write(" done\nnext\n")
    assert s.texts() == [(1, "progress", False), (1, " done\nnext\n", True)]


def test_a_task_end_sends_the_rest_and_the_next_output_starts_a_line():
    s = Stream()
    s.out.write("no newline")
    s.out.task_ended()
    s.out.write("next task\n")
    assert s.texts() == [(1, "no newline", False), (1, "next task\n", False)]


def test_another_jobs_output_does_not_continue_an_open_line():
    s = Stream()
    s.out.write("job one's")
    s.context = (2, "g", None)
    s.out.write("job two\n")
    assert s.texts() == [(1, "job one's", False), (2, "job two\n", False)]


def test_output_outside_any_task_goes_to_the_local_stream_prefixed():
    s = Stream()
    s.context = (0, "worker", None)
    s.out.write("starting\nha")
    s.out.write("lf\n")
    assert s.sent == [] and s.local.getvalue() == "(worker pid=42) starting\n(worker pid=42) half\n"


def test_when_the_node_is_gone_output_goes_to_the_local_stream():
    s = Stream(fail=True)
    s.out.write("lost?\n")
    assert s.local.getvalue() == "(f pid=42, ip=10.0.0.2) lost?\n"


def test_only_str_is_written():
    with pytest.raises(TypeError):
        Stream().out.write(b"bytes")


def test_prefix_lines():
    assert prefix_lines("a\nb\n", "(p) ") == "(p) a\n(p) b\n"
    assert prefix_lines("a\nb", "(p) ", cont=True) == "a\n(p) b"
    assert prefix_lines("", "(p) ", cont=True) == ""


def test_show_prefixes_with_the_ip_only_for_another_node(capsys):
    source = ("f", 7, "node-b", "127.0.0.1")
    show((M.OUTPUT, 1, STDOUT, "x\n", False, source, None), "node-b")
    show((M.OUTPUT, 1, STDERR, "y\n", False, source, None), "node-a")
    out = capsys.readouterr()
    assert (out.out, out.err) == ("(f pid=7) x\n", "(f pid=7, ip=127.0.0.1) y\n")
