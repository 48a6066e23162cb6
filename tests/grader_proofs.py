"""The assertions every grader proof shares (tests/test_graders*.py): a check passes a correct
solution with its one-line success message, rejects a wrong one with a message that says which
case failed, what it was given, and a hint, and reads a stub as "not attempted"."""

import pytest


def assert_check_passes(check, solution, capsys) -> None:
    check(solution)
    line = capsys.readouterr().out.strip()
    assert line.startswith("✓") and "cases pass" in line, line


def assert_check_rejects(check, mutant, words, capsys) -> str:
    """Assert ``check`` rejects ``mutant`` with every phrase of ``words`` in its message;
    return the message for further checks."""
    with pytest.raises(AssertionError) as failure:
        check(mutant)
    message = str(failure.value)
    first_line = message.splitlines()[0]
    assert "case" in first_line, message  # the first line alone says which case failed
    for word in words:
        assert word in message, f"{word!r} missing from:\n{message}"
    assert "hint:" in message and "inputs:" in message, message
    assert "✓" not in capsys.readouterr().out
    return message


def assert_stub_reads_as_not_attempted(check) -> None:
    def stub(*args):
        raise NotImplementedError

    with pytest.raises(AssertionError, match="task not attempted yet"):
        check(stub)


def assert_kernel_check_says_when_triton_is_missing(check, monkeypatch) -> None:
    """With every import of triton failing, a Triton task's check says the task needs Triton
    and where it runs, instead of failing with an ImportError."""
    import builtins

    real_import = builtins.__import__

    def no_triton(name, *args, **kwargs):
        if name == "triton" or name.startswith("triton."):
            raise ImportError("no triton here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_triton)
    with pytest.raises(AssertionError, match="needs Triton.*Linux, WSL2 or Colab"):
        check(lambda *args: None)
