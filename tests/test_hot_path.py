"""The decoding loop's fast paths give the slow paths' results: the oracle reading the model's tokens, the
per-call cache and background scoring of per-sample rewards overlapped with the denoiser."""
from __future__ import annotations

import torch

from svdd_lightning import SMC, SVDD, PosteriorMeanValue
from svdd_lightning.core.reward import GuardedReward, Reward
from svdd_lightning.core.run import Run
from svdd_lightning.core.state import distinct_rows
from svdd_lightning.diffusion import DilatedConvDenoiser, MaskedDiffusion


def tiny_model(seq_len: int = 16, steps: int = 8) -> MaskedDiffusion:
    torch.manual_seed(0)
    return MaskedDiffusion(DilatedConvDenoiser(4, channels=8, dilations=(1, 2)), "ACGU", seq_len, steps).eval()


def gc_count(sequences):
    return [float(s.count("G") + s.count("C")) for s in sequences]


class Background(Reward):
    """A per-sample reward that scores "in the background": ``submit`` records when each batch starts and
    the returned callable computes it later (as worker processes would)."""

    name = "gc"

    def __init__(self, events: list) -> None:
        self.events = events

    def __call__(self, sequences):
        return gc_count(sequences)

    def submit(self, sequences):
        self.events.append(("submit", len(sequences)))
        return lambda: gc_count(sequences)


def decode(model, reward, decoder, n=6):
    with torch.no_grad():
        return decoder.sample(model, reward, [torch.Generator().manual_seed(i) for i in range(n)])


def test_distinct_rows_are_in_first_occurrence_order():
    x = torch.tensor([[3, 1], [0, 2], [3, 1], [1, 1], [0, 2]])
    first, inverse = distinct_rows(x)
    assert first.tolist() == [0, 1, 3] and torch.equal(x[first][inverse], x)


def test_background_scoring_overlaps_the_denoiser_and_gives_the_same_samples(monkeypatch):
    """Chunks of x0_hat go to the reward while the next chunk is denoised; samples, rewards and denoiser
    calls are those of plain scoring, and a sample met again in the call is not scored again."""
    model = tiny_model()
    monkeypatch.setattr(model, "denoise_chunk_rows", lambda: 5)  # several denoiser chunks per step
    events: list = []
    denoise = model.denoise
    monkeypatch.setattr(model, "denoise", lambda x, level: events.append(("denoise", len(x))) or denoise(x, level))
    for decoder in (SVDD(PosteriorMeanValue(), 4), SMC(PosteriorMeanValue(), alpha=0.3)):
        plain = decode(model, GuardedReward(gc_count), decoder)
        events.clear()
        background = decode(model, GuardedReward(Background(events)), decoder)
        assert background.samples == plain.samples and torch.equal(background.rewards, plain.rewards)
        assert background.stats.denoiser_calls == plain.stats.denoiser_calls
        assert background.stats.reward_calls < plain.stats.reward_calls  # the call's cache
        kinds = [kind for kind, _ in events]
        # a submit between two denoiser calls: scoring ran while the denoiser went on
        assert any(a == "denoise" and b == "submit" and c == "denoise" for a, b, c in zip(kinds, kinds[1:], kinds[2:]))


def test_the_oracle_on_the_models_tokens_scores_what_it_scores_on_strings(tmp_path):
    """SVDD-PM with the token path (OracleReward.score_states) and with the decoded path (the same oracle
    behind a plain function) picks the same samples with the same rewards and reward calls."""
    from tiny_dna import tiny_enformer

    from svdd_lightning import checkpoints
    from svdd_lightning.domains.sequences.oracle import OracleReward

    torch.manual_seed(0)
    path = checkpoints.save(tiny_enformer().eval(), tmp_path / "oracle")
    model = MaskedDiffusion(DilatedConvDenoiser(4, channels=8, dilations=(1, 2)), "ACGT", 24, 8).eval()
    oracle = OracleReward(str(path))
    seen = []
    original = oracle.score_states
    oracle.score_states = lambda m, x0: seen.append(len(x0)) or original(m, x0)
    tokens = decode(model, GuardedReward(oracle), SVDD(PosteriorMeanValue(), 4))
    strings = decode(model, GuardedReward(lambda s: oracle(s)), SVDD(PosteriorMeanValue(), 4))
    assert seen  # the token path ran
    assert tokens.samples == strings.samples and torch.equal(tokens.rewards, strings.rewards)
    assert tokens.stats == strings.stats


def test_a_state_reading_reward_that_declines_falls_back_to_decoding():
    class Declines(Reward):
        calls = 0

        def __call__(self, sequences):
            return gc_count(sequences)

        def score_states(self, model, x0):
            Declines.calls += 1
            return None

    model = tiny_model()
    run = Run(model, GuardedReward(Declines()), range(3))
    x0 = torch.randint(0, 4, (3, model.seq_len))
    assert run.score(x0).tolist() == gc_count(model.decode(x0))
    run.score(x0)
    assert Declines.calls == 1  # asked once per call, then decoded


def test_the_gdss_correctors_second_score_call_honours_chunk_size():
    """GDSS's proposal evaluates the score networks again at each corrected candidate: with chunk_size set,
    no network call sees more rows than that (the proposal runs on row chunks)."""
    from ddp_jobs import tiny_graph_diffusion

    model = tiny_graph_diffusion().eval()
    sizes = []
    for network in (model.x_network, model.adj_network):
        network.register_forward_pre_hook(lambda module, args: sizes.append(len(args[0])))
    with torch.no_grad():
        result = SVDD(PosteriorMeanValue(), 3, chunk_size=4).sample(model, lambda s: [float(len(x)) for x in s],
                                                                    [torch.Generator().manual_seed(i) for i in range(5)])
    assert max(sizes) <= 4 and len(result.samples) == 5
    sizes.clear()
    with torch.no_grad():
        SVDD(PosteriorMeanValue(), 3).sample(model, lambda s: [float(len(x)) for x in s],
                                             [torch.Generator().manual_seed(i) for i in range(5)])
    assert max(sizes) == 15  # without chunk_size, all B x M candidates at once
