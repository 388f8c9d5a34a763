"""What tests that signal a child process need."""

from __future__ import annotations


def default_sigint() -> None:
    """preexec_fn: the child's SIGINT as a shell gives it. A test process may ignore or block
    SIGINT (something in a pytest worker had it ignored), and a child inherits that."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
