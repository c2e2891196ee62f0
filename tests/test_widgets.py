"""The decoding explorer: build it, move its sliders programmatically, check what it redraws.

Everything a slider change shows is checked against an independent computation: the samples against
`sample_texts` (itself checked against transformers' generate) and the bars against `next_token_table`.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import pytest

from utils.lm_analysis import next_token_table, sample_texts
from utils.widgets import DecodingExplorer, render_distribution, render_samples

PROMPTS = ("the acting was", "i")
SAMPLES, NEW_TOKENS = 3, 16


def expected_texts(model, tokenizer, explorer, **knobs):
    settings = {
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "do_sample": True,
        "prompt": PROMPTS[0],
        "seed": explorer.seed,
        **knobs,
    }
    return sample_texts(model, tokenizer, SAMPLES, max_new_tokens=NEW_TOKENS, **settings)[0]


@pytest.fixture()
def explorer(tiny_base_lm):
    model, tokenizer = tiny_base_lm
    return DecodingExplorer(model, tokenizer, prompts=PROMPTS, num_samples=SAMPLES, max_new_tokens=NEW_TOKENS, top_n=6)


def test_builds_a_widget_tree_with_the_controls(explorer):
    assert isinstance(explorer.widget, widgets.VBox)
    controls = [child for row in explorer.widget.children for child in row.children]
    for control in (
        explorer.prompt,
        explorer.mode,
        explorer.temperature,
        explorer.top_k,
        explorer.top_p,
        explorer.resample,
        explorer.distribution,
        explorer.samples,
    ):
        assert control in controls
    assert len(explorer.table) == 6 and len(explorer.texts) == SAMPLES


def test_initial_state_matches_plain_sampling(tiny_base_lm, explorer):
    model, tokenizer = tiny_base_lm
    assert explorer.texts == expected_texts(model, tokenizer, explorer)
    for text in explorer.texts:
        assert html.escape(text) in explorer.samples.value
    assert explorer.table == next_token_table(model, tokenizer, PROMPTS[0], top_n=6)


def test_temperature_slider_regenerates(tiny_base_lm, explorer):
    model, tokenizer = tiny_base_lm
    before_bars, before_texts = explorer.distribution.value, explorer.texts
    explorer.temperature.value = 0.3  # fires the observer, as dragging the slider would
    assert explorer.texts == expected_texts(model, tokenizer, explorer, temperature=0.3)
    assert explorer.table == next_token_table(model, tokenizer, PROMPTS[0], temperature=0.3, top_n=6)
    assert explorer.distribution.value != before_bars
    # Sharpening moves mass to the top token.
    assert explorer.table[0][2] > explorer.table[0][1]
    explorer.temperature.value = 1.0  # back: same seed, same samples
    assert explorer.texts == before_texts


def test_top_k_one_is_greedy(tiny_base_lm, explorer):
    model, tokenizer = tiny_base_lm
    explorer.top_k.value = 1
    assert [row[2] for row in explorer.table] == [1.0] + [0.0] * 5
    assert explorer.texts == expected_texts(model, tokenizer, explorer, do_sample=False)


def test_top_p_slider_keeps_the_nucleus(tiny_base_lm, explorer):
    model, tokenizer = tiny_base_lm
    explorer.top_p.value = 0.05
    assert explorer.texts == expected_texts(model, tokenizer, explorer, top_p=0.05)
    # By hand: keep the most likely tokens until their mass reaches p, renormalise, zero the rest.
    raw = [row[1] for row in explorer.table]
    kept = next(i + 1 for i in range(len(raw)) if sum(raw[: i + 1]) >= 0.05)
    for i, (_, p_raw, p_new) in enumerate(explorer.table):
        assert p_new == pytest.approx(p_raw / sum(raw[:kept]) if i < kept else 0.0, rel=1e-4, abs=1e-7)


def test_greedy_mode(tiny_base_lm, explorer):
    model, tokenizer = tiny_base_lm
    greedy = expected_texts(model, tokenizer, explorer, do_sample=False)
    explorer.mode.value = "greedy"
    assert explorer.texts == greedy and len(set(explorer.texts)) == 1 and "greedy" in explorer.distribution.value


def test_button_and_prompt_menu(tiny_base_lm, explorer):
    model, tokenizer = tiny_base_lm
    explorer.resample.click()
    assert explorer.seed == 1
    assert explorer.texts == expected_texts(model, tokenizer, explorer)
    explorer.prompt.value = "i"
    assert explorer.texts == expected_texts(model, tokenizer, explorer, prompt="i")
    assert all(t.startswith("i") for t in explorer.texts)


def test_renderers_by_hand():
    bars = render_distribution([("␣great", 0.5, 1.0), ("<|endoftext|>", 0.25, 0.0)], width_px=200)
    assert "width:100px" in bars and "width:200px" in bars and "width:50px" in bars and "width:0px" in bars
    assert "&lt;|endoftext|&gt;" in bars and "0.500 → 1.000" in bars
    items = render_samples(["the acting was great.", "the acting <b>"])
    assert "✓ the acting was great." in items and "✗ the acting &lt;b&gt;" in items


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"prompts": ()}, "prompts"),
        ({"num_samples": 0}, "num_samples"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"top_n": 1.5}, "top_n"),
    ],
)
def test_rejects_bad_arguments(tiny_base_lm, kwargs, field):
    model, tokenizer = tiny_base_lm
    with pytest.raises(ValueError, match=field):
        DecodingExplorer(model, tokenizer, **kwargs)


# ------------------------------------------------------------------------------------------------
# The KL explorer: made-up sweep records for the wiring, one real short run on tiny models
# ------------------------------------------------------------------------------------------------
def fake_record(beta: float, updates: int = 4, batch: int = 16, shift: float = 0.0) -> dict:
    """A kl_sweep record whose numbers are all distinct, so a test can tell which run is on screen."""
    log = [
        {
            "episode": batch * (u + 1),
            "objective/scores": shift + 0.1 * u + beta,
            "objective/gold_reward": shift - 0.05 * u,
            "objective/kl": (u + 1) / (1 + beta) + shift,
        }
        for u in range(updates)
    ]
    final = {
        "kl": 3.21 + beta + shift,
        "proxy_reward": 0.87 - beta + shift,
        "gold_reward": -0.34 + beta + shift,
        "grammatical_fraction": 0.75,
        "length_words": 12.5 + shift,
    }
    start = {
        "update": 0,
        "episodes": 0,
        "kl": 0.0,
        "proxy_reward": -0.2,
        "gold_reward": -0.16,
        "grammatical_fraction": 0.95,
        "length_words": 10.0,
    }
    samples = [
        {
            "prompt": "the plot was",
            "response": f" <run {beta:g}/{shift:g}> sample {i}.",
            "gold_reward": 0.5,
            "proxy_reward": 1.0 + i,
            "grammatical": i % 2 == 0,
        }
        for i in range(6)
    ]
    return {
        "beta": beta,
        **final,
        "log": log,
        "samples": samples,
        "checkpoints": [start, {"update": updates, "episodes": updates * batch, **final}],
    }


SWEEP = [fake_record(beta) for beta in (0.0, 0.1, 0.3)]


class FakeTrainer:
    """train_fn stand-in: records its calls and what the explorer looked like while training."""

    def __init__(self, explorer_ref: list, fail: Exception | None = None, result: dict | None = None):
        self.calls, self.seen, self.explorer_ref, self.fail, self.result = [], [], explorer_ref, fail, result

    def __call__(self, beta: float) -> dict:
        explorer = self.explorer_ref[0]
        self.calls.append(beta)
        self.seen.append((explorer.train.disabled, explorer.beta.disabled, explorer.status.value))
        if self.fail is not None:
            raise self.fail
        return self.result if self.result is not None else fake_record(beta, updates=2, batch=8, shift=5.0)


def make_kl_explorer(**kwargs):
    from utils.widgets import KLExplorer

    ref: list = [None]
    trainer = FakeTrainer(ref, **kwargs)
    explorer = KLExplorer(SWEEP, train_fn=trainer, num_samples=3)
    ref[0] = explorer
    return explorer, trainer


def expected_row(name: str, episodes: int, m: dict) -> str:
    return (
        f"<tr><td>{name}</td><td>{episodes:,}</td><td>{m['kl']:.2f}</td><td>{m['proxy_reward']:+.2f}</td>"
        f"<td>{m['gold_reward']:+.2f}</td><td>{m['grammatical_fraction']:.2f}</td><td>{m['length_words']:.1f}</td>"
    )


def test_kl_explorer_shows_the_selected_precomputed_run():
    from utils.widgets import curve_data

    explorer, trainer = make_kl_explorer()
    controls = [explorer.beta, explorer.train, explorer.status, explorer.summary, explorer.curves]
    tree = [explorer.widget.children[0].children, explorer.widget.children]
    assert all(any(c is control for row in tree for c in row) for control in controls)
    assert explorer.beta.value == 0.1 and [v for _, v in explorer.beta.options] == [0.0, 0.1, 0.3]
    record = SWEEP[1]
    assert expected_row("precomputed run", 64, record) in explorer.summary.value
    assert expected_row("SFT policy (start)", 0, record["checkpoints"][0]) in explorer.summary.value
    assert "your run" not in explorer.summary.value
    assert explorer.curve_data == {"precomputed": curve_data(record)}
    assert curve_data(record)["kl"] == [row["objective/kl"] for row in record["log"]]
    assert bytes(explorer.curves.value).startswith(b"\x89PNG")
    for sample in record["samples"][:3]:
        assert html.escape(sample["response"]) in explorer.precomputed_samples.value
    assert html.escape(record["samples"][3]["response"]) not in explorer.precomputed_samples.value
    assert "press the button to train" in explorer.your_samples.value
    assert "no run of yours" in explorer.status.value and not explorer.train.disabled
    assert trainer.calls == []


def test_kl_explorer_slider_switches_runs():
    explorer, _ = make_kl_explorer()
    before = explorer.curves.value
    explorer.beta.value = 0.0  # fires the observer, as dragging the slider would
    assert expected_row("precomputed run", 64, SWEEP[0]) in explorer.summary.value
    assert expected_row("precomputed run", 64, SWEEP[1]) not in explorer.summary.value
    assert explorer.curve_data["precomputed"]["proxy"] == [row["objective/scores"] for row in SWEEP[0]["log"]]
    assert explorer.curves.value != before
    assert "beta = 0:" not in explorer.summary.value  # the text quotes no number that is not in the data


def test_kl_explorer_trains_at_the_chosen_beta_and_shows_the_run_beside_the_precomputed_one():
    from utils.widgets import curve_data

    explorer, trainer = make_kl_explorer()
    explorer.beta.value = 0.3
    only_precomputed = explorer.curves.value
    explorer.train.click()
    assert trainer.calls == [0.3]
    disabled_train, disabled_slider, status = trainer.seen[0]
    assert disabled_train and disabled_slider and "training a short run at beta = 0.3" in status
    assert not explorer.train.disabled and not explorer.beta.disabled
    yours = explorer.runs[0.3]
    assert expected_row("your run (this machine)", 16, yours) in explorer.summary.value
    assert expected_row("precomputed run", 64, SWEEP[2]) in explorer.summary.value
    assert explorer.curve_data == {"precomputed": curve_data(SWEEP[2]), "yours": curve_data(yours)}
    assert explorer.curves.value != only_precomputed
    for sample in yours["samples"][:3]:
        assert html.escape(sample["response"]) in explorer.your_samples.value
    assert "your run, after 16 episodes" in explorer.your_samples.value
    assert f"trained in {explorer.seconds[0.3]:.0f} s on this machine" in explorer.status.value
    # Another beta has no run of yours; coming back shows the one trained, without training again.
    explorer.beta.value = 0.0
    assert "yours" not in explorer.curve_data and "your run" not in explorer.summary.value
    explorer.beta.value = 0.3
    assert explorer.curve_data["yours"] == curve_data(yours) and trainer.calls == [0.3]


def test_kl_explorer_reports_a_failed_run_and_stays_usable():
    explorer, trainer = make_kl_explorer(fail=RuntimeError("out of <memory>"))
    explorer.train.click()
    assert "training failed" in explorer.status.value and "out of &lt;memory&gt;" in explorer.status.value
    assert explorer.runs == {} and not explorer.train.disabled and not explorer.beta.disabled

    broken = fake_record(0.1)
    del broken["log"]
    explorer, _ = make_kl_explorer(result=broken)
    explorer.train.click()
    assert "lacks [&#x27;log&#x27;]" in explorer.status.value and explorer.runs == {}


def test_kl_explorer_without_train_fn_only_browses():
    from utils.widgets import KLExplorer

    explorer = KLExplorer(SWEEP, beta=0.0)
    assert explorer.train.disabled and "browsing only" in explorer.status.value
    with pytest.raises(RuntimeError, match="no train_fn"):
        explorer.train_here()


@pytest.mark.parametrize(
    "sweep, kwargs, message",
    [
        ([], {}, "at least one"),
        ([{k: v for k, v in SWEEP[0].items() if k != "samples"}], {}, r"sweep\[0\] lacks \['samples'\]"),
        ([{**SWEEP[0], "log": [{"episode": 16}]}], {}, r"sweep\[0\]: log row 0 lacks"),
        ([SWEEP[0], SWEEP[0]], {}, "repeats a beta"),
        (SWEEP, {"beta": 0.2}, r"beta must be one of the sweep's \[0.0, 0.1, 0.3\], got 0.2"),
        (SWEEP, {"num_samples": 0}, "num_samples"),
    ],
)
def test_kl_explorer_rejects_bad_arguments(sweep, kwargs, message):
    from utils.widgets import KLExplorer

    with pytest.raises(ValueError, match=message):
        KLExplorer(sweep, **kwargs)


def test_short_ppo_run_trains_and_feeds_the_explorer(tiny_base_lm, tiny_profile):
    """The real short run on a tiny LM against a transparent reward: it trains, and the explorer shows it."""
    import dataclasses
    import functools

    import torch

    from utils import review_world as rw
    from utils.ppo import PPOConfig, text_reward_fn
    from utils.stages import load_dataset_rows
    from utils.widgets import LOG_KEYS, SHORT_RUN, KLExplorer, curve_data, short_ppo_run

    policy, tokenizer = tiny_base_lm
    train = [r["prompt"] for r in load_dataset_rows("rl_prompts_train", tiny_profile)]
    test = [r["prompt"] for r in load_dataset_rows("rl_prompts_test", tiny_profile)]
    threads_seen = []

    def shorter_is_better(text):  # quick to learn; also notes how many threads the run uses
        threads_seen.append(torch.get_num_threads())
        return -rw.word_count(text) / 5

    proxy = text_reward_fn(shorter_is_better, tokenizer)
    ppo = PPOConfig(batch_size=16, num_minibatches=2, response_length=16, lr=3e-3)
    run = dataclasses.replace(SHORT_RUN, total_episodes=64, batch_size=16, eval_prompts=8, temperature=1.0)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    train_fn = functools.partial(short_ppo_run, policy, proxy, tokenizer, train, test, ppo, run=run)

    torch.set_num_threads(2)
    record = train_fn(0.0)
    assert set(threads_seen) == {1} and torch.get_num_threads() == 2  # one thread while it ran, then restored
    torch.set_num_threads(1)  # as conftest sets it
    assert record["beta"] == 0.0 and record["temperature"] == 1.0 and record["eval_prompts"] == 8
    assert [row["episode"] for row in record["log"]] == [16, 32, 48, 64]
    assert all(set(LOG_KEYS) <= set(row) for row in record["log"])
    assert abs(record["log"][0]["objective/kl"]) < 1e-5  # the first rollout comes from the untouched policy
    assert record["checkpoints"][0]["kl"] == 0.0 and record["kl"] > 0  # it moved away from the reference
    assert record["proxy_reward"] > record["checkpoints"][0]["proxy_reward"]  # and towards the reward
    assert len(record["samples"]) == run.samples_kept
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())  # the input is untouched
    with pytest.raises(ValueError, match="betas"):
        train_fn(-1.0)
    with pytest.raises(ValueError, match="num_threads must be None or an int >= 1, got 0"):
        train_fn(0.0, num_threads=0)

    explorer = KLExplorer([record], train_fn=train_fn)
    explorer.train.click()
    yours = explorer.runs[0.0]
    assert curve_data(yours) == curve_data(record)  # same seed, same run
    assert expected_row("your run (this machine)", 64, yours) in explorer.summary.value
    assert "your run on 8 prompts" in explorer.summary.value
