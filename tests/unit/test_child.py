"""The pure parts of `run --exec`: splitting the command, spotting unexpanded variables, exit statuses."""

import signal

import pytest

from worker.child import StartError, exit_code, split_command, unexpanded_variables


def test_the_command_is_split_as_a_shell_would_without_expanding_anything() -> None:
    assert split_command("uvicorn app:app --host 0.0.0.0 --port 8000") == ["uvicorn", "app:app", "--host", "0.0.0.0", "--port", "8000"]
    assert split_command("sh -c 'exec uvicorn app:app --port ${PORT:-8000}'") == ["sh", "-c", "exec uvicorn app:app --port ${PORT:-8000}"]
    assert split_command('python "my app.py" *.txt') == ["python", "my app.py", "*.txt"]


@pytest.mark.parametrize("text", ["", "   ", "uvicorn 'app:app", 'python "unclosed'])
def test_an_empty_or_badly_quoted_command_is_refused_with_one_sentence(text: str) -> None:
    with pytest.raises(StartError) as raised:
        split_command(text)
    assert "--exec" in str(raised.value) and "\n" not in str(raised.value)


def test_dollar_names_left_in_the_arguments_are_reported() -> None:
    assert unexpanded_variables(["uvicorn", "app:app", "--port", "$PORT"]) == ["PORT"]
    assert unexpanded_variables(["sh", "-c", "exec x --port ${PORT:-8000} --host $HOST"]) == ["HOST", "PORT"]
    assert unexpanded_variables(["uvicorn", "app:app", "--port", "8080", "--price", "$5"]) == []


def test_exit_statuses_read_like_a_shell() -> None:
    assert exit_code(0) == 0 and exit_code(3) == 3
    assert exit_code(-signal.SIGTERM) == 143 and exit_code(-signal.SIGKILL) == 137
