"""Thread counts that follow the machine's load (issue 12): the choice, the watchdog, pinning."""

from __future__ import annotations

import json

import pytest

from edgechat.threads import CpuReading, Governor, ThreadChoice, ThreadControl, choose_threads, replay
from tests.conftest import GREEDY, run_cli

# the choice ------------------------------------------------------------------------------


def test_idle_machine_uses_every_physical_core() -> None:
    r = CpuReading(busy=(0.03, 0.05), own=0.0, physical=2, logical=2)
    assert choose_threads(r) == ThreadChoice(decode=2, prefill=2)


def test_one_busy_process_leaves_one_thread_on_two_cores() -> None:
    r = CpuReading(busy=(1.0, 0.04), own=0.0, physical=2, logical=2)
    assert choose_threads(r) == ThreadChoice(decode=1, prefill=1)


def test_two_busy_processes_still_get_one_thread() -> None:
    r = CpuReading(busy=(1.0, 1.0), own=0.0, physical=2, logical=2)
    assert choose_threads(r) == ThreadChoice(decode=1, prefill=1)


def test_partly_busy_cores_give_prefill_more_threads_than_decode() -> None:
    # 1.4 cores of other work on 4: 2.6 free. Decode wants cores 70 % free, prefill half free.
    r = CpuReading(busy=(0.9, 0.5, 0.0, 0.0), own=0.0, physical=4, logical=4)
    assert choose_threads(r) == ThreadChoice(decode=2, prefill=3)


def test_own_work_is_not_counted_as_load() -> None:
    # Both cores busy, all of it this process's own decode: the machine is ours.
    r = CpuReading(busy=(1.0, 0.97), own=1.95, physical=2, logical=2)
    assert choose_threads(r) == ThreadChoice(decode=2, prefill=2)


def test_affinity_limits_the_threads_and_ignores_load_elsewhere() -> None:
    # 8 CPUs, this process may use 0 and 1; the others are saturated but off-limits anyway.
    busy = (0.0, 0.02, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    r = CpuReading(busy=busy, own=0.0, physical=8, logical=8, affinity=(0, 1))
    assert r.cores == 2
    assert choose_threads(r) == ThreadChoice(decode=2, prefill=2)
    # ...and load inside the allowed set does count.
    r = CpuReading(busy=(1.0, 0.0, 0.0, 0.0), own=0.0, physical=4, logical=4, affinity=(0, 1))
    assert choose_threads(r) == ThreadChoice(decode=1, prefill=1)


def test_hyperthreads_count_as_physical_cores() -> None:
    # 4 cores, 8 logical CPUs: llama.cpp gets 4 threads, not 8.
    idle = CpuReading(busy=(0.0,) * 8, own=0.0, physical=4, logical=8)
    assert choose_threads(idle) == ThreadChoice(decode=4, prefill=4)
    # Two logical CPUs' worth of other work is one physical core.
    busy = CpuReading(busy=(1.0, 1.0, 0, 0, 0, 0, 0, 0), own=0.0, physical=4, logical=8)
    assert choose_threads(busy) == ThreadChoice(decode=3, prefill=3)
    # An affinity of 4 logical CPUs is 2 cores.
    half = CpuReading(busy=(0.0,) * 8, own=0.0, physical=4, logical=8, affinity=(0, 1, 2, 3))
    assert choose_threads(half) == ThreadChoice(decode=2, prefill=2)


def test_a_saturated_machine_still_gets_one_thread() -> None:
    r = CpuReading(busy=(1.0,) * 4, own=0.0, physical=4, logical=4)
    assert choose_threads(r) == ThreadChoice(decode=1, prefill=1)


def test_labels() -> None:
    assert ThreadChoice(2, 2).label() == "2 threads"
    assert ThreadChoice(1, 2).label() == "1/2 threads"
    assert ThreadChoice(1, 1, auto=False).label() == "1 thread (pinned)"


# the watchdog ----------------------------------------------------------------------------

CALM_2, CALM_1, CONTENDED_2 = 0.006, 0.0065, 0.020


def test_watchdog_steps_down_when_tokens_slow_and_back_up_when_the_machine_frees() -> None:
    trace = (
        [(CALM_2, 0.0)] * 12  # idle machine, 2 threads: the calm latency is learned
        + [(CONTENDED_2, 0.0)] * 6  # a build starts: 3x slower
        + [(CALM_1, 0.0)] * 20  # 1 thread on the free core; no idle CPU, so no step up
        + [(CALM_1, 1.0)] * 10  # the build ends: a whole core idle
        + [(CALM_2, 0.0)] * 20  # 2 threads again, calm
    )
    steps = replay(trace, start=2, max_threads=2)
    down = steps.index(1)
    assert 12 < down <= 12 + 4, "steps down within a window of the jump"
    assert all(n == 1 for n in steps[down:38]), "stays down while the other core is busy"
    up = steps.index(2, 38)
    assert up < 38 + 10
    assert all(n == 2 for n in steps[up:]), "stays up once the machine is free"


def test_a_step_up_that_is_slower_goes_back_down_and_waits_longer() -> None:
    gov = Governor(start=1, max_threads=2)
    for _ in range(10):
        gov.observe(CALM_1, 0.0)
    # A moment of idle CPU: the watchdog tries 2 threads...
    assert gov.observe(CALM_1, 1.0) == 2
    # ...but the other process is back: 2 threads are slower than 1 was.
    changes = [gov.observe(CONTENDED_2, 1.0) for _ in range(4)]
    assert changes[-1] == 1 and gov.n == 1
    first_wait = gov.backoff
    # It waits twice the settle time before trying again.
    tries = [gov.observe(CALM_1, 1.0) for _ in range(first_wait)]
    assert tries.index(2) == first_wait - 1
    assert first_wait == 2 * gov.settle


def test_watchdog_never_goes_below_one_or_above_the_cores() -> None:
    assert set(replay([(1.0, 0.0)] * 30, start=1, max_threads=2)) == {1}
    assert set(replay([(0.001, 4.0)] * 30, start=2, max_threads=2)) == {2}


def test_watchdog_ignores_single_slow_tokens() -> None:
    trace = [(CALM_2, 0.0)] * 8 + [(0.1, 0.0)] + [(CALM_2, 0.0)] * 8 + [(0.1, 0.0)] + [(CALM_2, 0.0)] * 8
    assert set(replay(trace, start=2, max_threads=2)) == {2}


# pinning ---------------------------------------------------------------------------------


def test_pinned_threads_never_change() -> None:
    applied: list[tuple[int, int]] = []
    control = ThreadControl(lambda d, p: applied.append((d, p)), pin=3)
    assert control.before_prefill() == ThreadChoice(3, 3, auto=False)
    for _ in range(50):
        control.on_token(1.0)
    assert control.choice == ThreadChoice(3, 3, auto=False)
    assert applied == [] and control.changes == 0


def test_auto_control_applies_its_choice_before_prefill() -> None:
    applied: list[tuple[int, int]] = []
    control = ThreadControl(lambda d, p: applied.append((d, p)))
    try:
        choice = control.before_prefill()
        assert choice.auto and applied == [(choice.decode, choice.prefill)]
        assert 1 <= choice.decode <= control.max_threads
    finally:
        control.close()


@pytest.mark.parametrize("cmd", ["generate", "send"])
def test_json_stats_show_the_threads(cmd: str, home, smollm2) -> None:
    args = ["generate", "Hi"] if cmd == "generate" else ["send", "Hi", "--new"]
    auto = run_cli(*args, "-m", str(smollm2), "--max-tokens", "4", "--temperature", "0", "--json", home=home)
    assert auto.returncode == 0, auto.stderr
    data = json.loads(auto.stdout)
    assert data["threads_auto"] is True and data["decode_threads"] >= 1 and data["prefill_threads"] >= 1
    pinned = run_cli(*args, "-m", str(smollm2), "--max-tokens", "4", *GREEDY[:4], "--threads", "1", "--json", home=home)
    assert pinned.returncode == 0, pinned.stderr
    data = json.loads(pinned.stdout)
    assert (data["threads_auto"], data["decode_threads"], data["prefill_threads"]) == (False, 1, 1)


# a live context --------------------------------------------------------------------------


def test_changing_threads_mid_reply_keeps_the_greedy_reply(runtime_factory) -> None:
    from edgechat.config import SamplingSettings

    # 1 thread as the base: on a loaded test box, 2 pinned threads decode many times slower.
    rt = runtime_factory(threads=1)
    eng = rt.load()
    greedy = SamplingSettings(max_tokens=24, temperature=0.0, seed=0)
    prompt = eng.chat_tokens([{"role": "user", "content": "Tell me about the moon."}])
    steady = eng.generate(prompt, greedy)
    steady.run()
    eng.clear()
    switched = eng.generate(prompt, greedy)
    for i, _ in enumerate(switched):
        if i == 5:
            eng.set_threads(2, 2)
        if i == 8:
            eng.set_threads(1, 2)
    assert len(steady.tokens) > 8
    assert switched.tokens == steady.tokens
    assert eng.llm.n_threads == 1 and eng.llm.n_threads_batch == 2


def test_changing_threads_between_turns_keeps_the_conversation(runtime_factory) -> None:
    texts = ["What is the capital of France?", "And of Italy?"]
    rt = runtime_factory(threads=1)
    conv = rt.new_conversation()
    steady = [conv.send(t, max_tokens=12, temperature=0).text for t in texts]
    rt2 = runtime_factory(threads=1)
    conv2 = rt2.new_conversation()
    first = conv2.send(texts[0], max_tokens=12, temperature=0).text
    assert rt2.engine is not None
    rt2.engine.set_threads(1, 2)  # the second turn's prefill runs on 2 threads
    second = conv2.send(texts[1], max_tokens=12, temperature=0)
    assert [first, second.text] == steady
    assert (second.stats.decode_threads, second.stats.prefill_threads) == (1, 2), "stats say what the context ran"
