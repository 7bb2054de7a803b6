"""`qcoder ask` / `qcoder export` / the Engine: prompt, data loading, streaming, errors.

Fast tests drive the command with a scripted decoder (tests/test_generate.py) so the output is
known; the slow test runs the real embedded model end to end and executes its answer. `ask
--data` goes to the copilot, tested here only as far as the hand-over (tests/copilot).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from test_generate import EOS, ByteTokenizer, ScriptedSession

from qcoder_ds import cli
from qcoder_ds.commands import ask
from qcoder_ds.copilot.cli_ask import DataFileError, load_table
from qcoder_ds.engine import Engine
from qcoder_ds.errors import ContextLengthError, GenerationCancelled, QcoderError
from qcoder_ds.runtime.generate import EmptyPromptError
from qcoder_ds.runtime.sampler import SamplingParams

REPO = Path(__file__).resolve().parents[1]
SALES = REPO / "examples" / "data" / "sales.csv"


class EchoTemplate:
    """A stand-in chat template: role: content lines (the real one is tested elsewhere)."""

    def render(self, messages, add_generation_prompt=False):
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def scripted_engine(answer: str, max_context: int = 4096) -> tuple[Engine, ScriptedSession]:
    """An Engine whose model writes ``answer`` (then EOS) after whatever prompt it gets."""

    tok = ByteTokenizer()
    a = tok.encode(answer) + [EOS]

    class Session(ScriptedSession):
        def __init__(self):
            super().__init__([], max_context=max_context)
            self.prompt_len = None

        def forward(self, ids):
            if self.position == 0:
                self.prompt_len = None
            self.position += len(ids)
            self.calls.append(np.asarray(ids).tolist())
            if self.prompt_len is None:
                self.prompt_len = self.position
            k = self.position - self.prompt_len  # tokens generated so far
            out = np.full(self.vocab_size, -10.0, np.float32)
            out[a[min(k, len(a) - 1)]] = 10.0
            return out

    s = Session()
    # one prefill call, so the session knows where the prompt ends
    return Engine(s, tok, EchoTemplate(), name="scripted", prefill_chunk=1 << 20), s


# ------------------------------------------------------------------ prompt and data


def test_prompt_without_data_is_just_the_request():
    msgs = ask.build_ask_messages("fizzbuzz in one line")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "df" not in msgs[1]["content"] and "fizzbuzz" in msgs[1]["content"]


def test_load_table_csv_parquet_and_errors(tmp_path):
    df = load_table(SALES)
    assert df.shape == (400, 8)
    pq = tmp_path / "s.parquet"
    df.head(20).to_parquet(pq)
    assert load_table(pq).equals(df.head(20))
    with pytest.raises(DataFileError, match="no such file"):
        load_table(tmp_path / "missing.csv")
    (tmp_path / "x.xlsx").write_text("nope")
    with pytest.raises(DataFileError, match="unsupported data file type '.xlsx'"):
        load_table(tmp_path / "x.xlsx")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataFileError, match="cannot read it as a table"):
        load_table(tmp_path / "bad.parquet")


def test_until_block_end_cuts_after_the_closing_fence_even_when_split():
    text, pieces = "", ["Here:\n``", "`python\nx = 1\n`", "``\nThat code sets x."]
    out = []
    for p in pieces:
        cut, done = ask._until_block_end(text, p)
        text += cut
        out.append(cut)
        if done:
            break
    assert text == "Here:\n```python\nx = 1\n```"
    assert done


# ------------------------------------------------------------------ the command, scripted model


def _run_cli(monkeypatch, capsys, engine, argv):
    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, *a, **k: engine))
    code = cli.main(argv)
    return code, capsys.readouterr()


def test_ask_streams_the_code_block_and_stops_there(monkeypatch, capsys):
    answer = "print(sum(range(10)))\n```\nThis prints 45."
    engine, session = scripted_engine(answer)
    code, out = _run_cli(monkeypatch, capsys, engine, ["ask", "sum of 0..9"])
    assert code == 0
    assert out.out == "```python\nprint(sum(range(10)))\n```\n"
    prompt = bytes(session.calls[0]).decode()
    assert "sum of 0..9" in prompt
    assert prompt.endswith("assistant: ```python\n")  # the reply starts in the model's mouth
    # the model stopped being asked for tokens right after the closing fence
    assert len(session.calls) - 1 < len(answer.encode())


def test_ask_with_data_goes_to_the_copilot_with_the_table_described(monkeypatch, capsys):
    engine, session = scripted_engine('df.groupby("region")["revenue"].sum()\n```\n',
                                      max_context=1 << 16)
    code, out = _run_cli(monkeypatch, capsys, engine,
                         ["ask", "--data", str(SALES), "--no-check", "total revenue per region"])
    assert code == 0, out.err
    prompt = bytes(session.calls[0]).decode()
    assert "DataFrame `df`: 400 rows" in prompt  # copilot.context described the table
    assert 'df.groupby("region")["revenue"].sum()' in out.out and "# checks:" in out.err


def test_ask_full_prints_everything(monkeypatch, capsys):
    answer = "x = 1\n```\nDone."
    engine, _ = scripted_engine(answer)
    code, out = _run_cli(monkeypatch, capsys, engine, ["ask", "--full", "x"])
    assert code == 0 and out.out == "```python\n" + answer + "\n"


def test_ask_bad_inputs_are_clear_errors_not_tracebacks(monkeypatch, capsys, tmp_path):
    engine, _ = scripted_engine("x")
    code, out = _run_cli(monkeypatch, capsys, engine, ["ask", "--data", "nope.csv", "x"])
    assert code == 1 and "qcoder: error: nope.csv: no such file" in out.err
    assert "Traceback" not in out.err
    code, out = _run_cli(monkeypatch, capsys, engine, ["ask", "   "])
    assert code == 1 and "request is empty" in out.err
    small, _ = scripted_engine("x", max_context=64)
    code, out = _run_cli(monkeypatch, capsys, small, ["ask", "x" * 200])
    assert code == 1 and "context holds 64" in out.err


# ------------------------------------------------------------------ the Engine


def test_engine_chat_complete_count_and_finish_reason():
    engine, _ = scripted_engine("SELECT 1;\nEND more")
    stream = engine.chat([{"role": "user", "content": "q"}], SamplingParams(stop=("END",)))
    assert "".join(stream) == "SELECT 1;\n"
    assert stream.finish_reason == "stop"
    assert engine.count_tokens("héllo") == 6  # bytes
    assert engine.max_context == 4096
    assert engine.generate([{"role": "user", "content": "q"}]) == "SELECT 1;\nEND more"


def test_engine_errors_and_cancel():
    engine, _ = scripted_engine("abcdefgh" * 10, max_context=64)
    with pytest.raises(EmptyPromptError):
        engine.complete("")
    with pytest.raises(ContextLengthError):
        engine.complete("x" * 100)
    assert len("".join(engine.complete("x" * 100, SamplingParams(max_new_tokens=5),
                                       truncate=True))) == 5
    ev = threading.Event()
    got = []
    with pytest.raises(GenerationCancelled):
        for piece in engine.complete("hi", cancel=ev):
            got.append(piece)
            ev.set()
    assert got == ["a"]
    # the lock was released: the engine is usable again
    assert "".join(engine.complete("hi", SamplingParams(max_new_tokens=3))) == "abc"


def test_engine_runs_one_generation_at_a_time():
    engine, _ = scripted_engine("abcdef")
    first = engine.complete("one")
    assert next(first) == "a"
    second_done = threading.Event()

    def other():
        "".join(engine.complete("two"))
        second_done.set()

    t = threading.Thread(target=other)
    t.start()
    assert not second_done.wait(0.3)  # waits for the first stream
    assert "".join(first) == "bcdef"
    assert second_done.wait(10)
    t.join()


def test_engine_without_template_refuses_chat():
    engine, _ = scripted_engine("x")
    engine.template = None
    with pytest.raises(QcoderError, match="no chat template"):
        engine.chat([{"role": "user", "content": "q"}])


# ------------------------------------------------------------------ the real model (slow)


@pytest.mark.slow
def test_real_model_answers_a_plain_request_with_code_that_runs(capsys, tmp_path):
    """Greedy, the embedded model, `qcoder ask` without data: the streamed block is code that
    runs (in a subprocess, time-limited) and prints what was asked."""
    request = "define is_prime(n), then print(is_prime(97))"
    assert cli.main(["ask", "--max-tokens", "200", request]) == 0
    out = capsys.readouterr().out
    m = re.search(r"```python\n(.*?)```", out, re.S)
    assert m, f"no code block in the answer:\n{out}"
    script = tmp_path / "answer.py"
    script.write_text(m.group(1))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60, check=False)
    assert run.returncode == 0, f"{m.group(1)}\n---\n{run.stderr[-2000:]}"
    assert "True" in run.stdout
