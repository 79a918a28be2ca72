"""Exactness of the decoders on an enumerable masked diffusion (the paper's Theorem 1).

The toy model (tests/toys.py) has 3 symbols, length 3 and 3 steps: its 64 states per level, its
exact transition kernels, p_pre(x_0) over the 27 clean sequences and the exact soft value
v_k(x) = alpha log E_pre[exp(r(x_0) / alpha) | x_k] are all enumerated. With that value,

* SVDD with many candidates and SMC sample the target p(x) proportional to exp(r(x) / alpha) p_pre(x);
* pretrained sampling samples p_pre and fails the same tests against the target (the tests have teeth);
* SVDD with few candidates samples its own exactly computable finite-M law, not the target;
* with alpha = 0 and the exact (hard) value, SVDD returns the reward's unique maximiser.
"""
from __future__ import annotations

import pytest
import torch
from scipy import stats

from svdd_lightning import SMC, SVDD, PretrainedSampling
from svdd_lightning.core.selection import resample, select_candidates
from toys import ExactMaskedChain, ExactValue, TableReward, generators, make_masked_toy

ALPHA = 0.5
N = 6000  # samples per decoder in the goodness-of-fit tests
PASS, FAIL = 1e-3, 1e-6  # the fit must have p > PASS; a wrong law must get p < FAIL


pytestmark = pytest.mark.usefixtures("inference_mode")


@pytest.fixture(scope="module")
def toy():
    with torch.inference_mode():
        model = make_masked_toy()
        chain = ExactMaskedChain(model)
    g = torch.Generator().manual_seed(123)
    reward = TableReward({s: 2 * float(torch.rand((), generator=g)) for s in chain.sequences})
    values = chain.soft_values(reward, ALPHA)
    target = chain.target(reward, ALPHA)
    return model, chain, reward, values, target


def tv(counts: torch.Tensor, law: torch.Tensor) -> float:
    return 0.5 * float((counts.double() / counts.sum() - law).abs().sum())


def _pool(counts: torch.Tensor, law: torch.Tensor, per_row: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the cells whose expected count (per_row x law) is below 5 into one cell (last column)."""
    small = per_row * law < 5
    if not bool(small.any()):
        return counts, law
    return (torch.cat([counts[..., ~small], counts[..., small].sum(-1, keepdim=True)], -1),
            torch.cat([law[~small], law[small].sum().view(1)]))


def chi_square_p(counts: torch.Tensor, law: torch.Tensor) -> float:
    """Pearson goodness of fit of i.i.d. counts to ``law`` (cells with expected count < 5 pooled)."""
    counts, law = _pool(counts.double(), law, float(counts.sum()))
    expected = law / law.sum() * counts.sum()
    return float(stats.chisquare(counts.numpy(), expected.numpy()).pvalue)


def hotelling_p(batch_counts: torch.Tensor, law: torch.Tensor) -> float:
    """Goodness of fit of K independent batches' frequency vectors (K, C) to ``law``.

    SMC's particles are not independent (resampling copies them: the variance of a cell count is
    2-3.5x the multinomial one here), so Pearson's test on one population is invalid. The batches
    are independent populations; Hotelling's T^2 on their frequency vectors, with the covariance
    estimated between batches, makes no assumption on the within-population dependence.
    """
    k, n = batch_counts.shape[0], float(batch_counts[0].sum())
    counts, law = _pool(batch_counts.double(), law, n)
    freq = counts / n
    d = freq.shape[1] - 1  # frequencies sum to 1: drop the last cell
    diff = (freq.mean(0) - law)[:d]
    cov = torch.cov(freq[:, :d].T)
    t2 = k * float(diff @ torch.linalg.solve(cov, diff))
    return float(stats.f.sf((k - d) / (d * (k - 1)) * t2, d, k - d))


# --- the enumeration itself ------------------------------------------------------------------------
def test_enumeration_is_consistent(toy):
    model, chain, reward, values, target = toy
    for kernel in chain.kernels:
        assert torch.allclose(kernel.sum(1), torch.ones(len(kernel), dtype=torch.float64))
    assert chain.p_pre.sum().item() == pytest.approx(1.0, abs=1e-12)
    # v_0(all masked) = alpha log E_pre[exp(r / alpha)]
    r = chain.reward_vector(reward)
    v0 = values[0][chain.index(torch.full((1, model.seq_len), model.mask_id))].item()
    assert v0 == pytest.approx(ALPHA * float(torch.log((chain.p_pre * torch.exp(r / ALPHA)).sum())), abs=1e-10)
    # Theorem 1: the soft-optimal policy p_pre(y|x) exp((v_{k+1}(y) - v_k(x)) / alpha) has law = target
    assert torch.allclose(chain.optimal_policy_law(values, ALPHA), target, atol=1e-12)
    # the target is far from p_pre: the reward matters
    assert 0.5 * float((target - chain.p_pre).abs().sum()) > 0.3
    # SVDD's finite-M law goes from p_pre (M = 1) to the target (M -> infinity)
    assert torch.allclose(chain.svdd_law(values, ALPHA, 1), chain.p_pre, atol=1e-9)
    tvs = [0.5 * float((chain.svdd_law(values, ALPHA, m) - target).abs().sum()) for m in (2, 8, 100)]
    assert tvs[0] > tvs[1] > tvs[2] and tvs[2] < 0.005


def test_pretrained_sampling_matches_p_pre_not_target(toy):
    model, chain, reward, values, target = toy
    counts = chain.counts(PretrainedSampling().sample(model, reward, generators(N)).x0)
    assert chi_square_p(counts, chain.p_pre) > PASS, tv(counts, chain.p_pre)
    assert chi_square_p(counts, target) < FAIL  # the test below has teeth


# --- Theorem 1: SVDD and SMC with the exact soft value sample the target ----------------------------
def test_svdd_exact_value_samples_target(toy):
    model, chain, reward, values, target = toy
    result = SVDD(ExactValue(chain, values), num_candidates=100, alpha=ALPHA).sample(model, reward, generators(N))
    counts = chain.counts(result.x0)
    # M = 100: the exact finite-M law is within TV 0.004 of the target (noncentrality 0.6 at N = 6000)
    assert chi_square_p(counts, target) > PASS, tv(counts, target)
    assert chi_square_p(counts, chain.p_pre) < FAIL
    assert result.rewards.mean() > torch.dot(chain.p_pre, chain.reward_vector(reward)).item() + 0.3


def test_svdd_few_candidates_samples_its_finite_m_law(toy):
    """With M = 4 the selection is a 4-sample self-normalised importance resampling: its law is
    computed exactly, SVDD matches it, and it is clearly not the target (TV 0.12)."""
    model, chain, reward, values, target = toy
    counts = chain.counts(SVDD(ExactValue(chain, values), 4, ALPHA).sample(model, reward, generators(N)).x0)
    assert chi_square_p(counts, chain.svdd_law(values, ALPHA, 4)) > PASS
    assert chi_square_p(counts, target) < FAIL


@pytest.mark.parametrize("resampling,ess_threshold", [("multinomial", 1.0), ("systematic", 0.5)])
def test_smc_exact_value_samples_target(toy, resampling, ess_threshold):
    model, chain, reward, values, target = toy
    k, n = 40, N // 40  # 40 independent populations of 150 particles
    decoder = SMC(ExactValue(chain, values), alpha=ALPHA, ess_threshold=ess_threshold, resampling=resampling)
    smc = torch.stack([chain.counts(decoder.sample(model, reward, generators(n, offset=1000 + j * n)).x0)
                       for j in range(k)])
    assert hotelling_p(smc, target) > PASS, tv(smc.sum(0), target)
    pre = torch.stack([chain.counts(PretrainedSampling().sample(model, reward, generators(n, offset=j * n)).x0)
                       for j in range(k)])
    assert hotelling_p(pre, target) < FAIL  # the same test rejects p_pre
    assert hotelling_p(pre, chain.p_pre) > PASS


def test_svdd_argmax_with_exact_hard_value_finds_the_maximiser(toy):
    """alpha = 0, v_k(x) = max of r over the clean sequences reachable from x: SVDD keeps a
    candidate from which the maximiser is still reachable whenever one of its M candidates is."""
    model, chain, reward, _, _ = toy
    hard = chain.soft_values(reward, 0.0)
    r = chain.reward_vector(reward)
    best = int(r.argmax())
    assert (r == r[best]).sum() == 1 and chain.p_pre[best] < 0.1  # unique, and rare under p_pre
    m, n = 512, 300
    # probability that some step offers no candidate that keeps the maximum: below 1e-6 for the batch
    miss = 0.0
    for k, kernel in enumerate(chain.kernels):
        on_path = (hard[k] == r[best]) & (chain.marginals[k] > 0)
        keep = (kernel * (hard[k + 1].unsqueeze(0) == r[best])).sum(1)
        miss += float(((1 - keep[on_path]) ** m).max())
    assert n * miss < 1e-6
    result = SVDD(ExactValue(chain, hard), num_candidates=m, alpha=0.0).sample(model, reward, generators(n))
    assert result.samples == [chain.sequences[best]] * n
    assert torch.all(result.rewards == result.rewards[0])


# --- selection rules ------------------------------------------------------------------------------
def test_select_candidates_argmax():
    values = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(select_candidates(values, 0.0, generators(50)), values.argmax(1))
    with pytest.raises(ValueError, match="alpha"):
        select_candidates(values, -1.0, generators(50))


def test_select_candidates_softmax_frequencies():
    b, alpha = 20000, 0.7
    row = torch.tensor([0.3, 1.2, -0.5, 0.9, 0.0])
    chosen = select_candidates(row.repeat(b, 1), alpha, generators(b))
    counts = torch.bincount(chosen, minlength=len(row))
    assert chi_square_p(counts, torch.softmax(row.double() / alpha, 0)) > PASS
    # row b uses generator b only
    again = select_candidates(row.repeat(5, 1), alpha, generators(range(100, 105)))
    assert torch.equal(again, chosen[100:105])


def test_resample_multinomial_frequencies():
    n = 20000
    group = torch.arange(n) % 4
    log_w = torch.tensor([0.0, 1.0, -1.0, 2.0], dtype=torch.float64)[group]
    ancestors = resample(log_w, torch.Generator().manual_seed(0), "multinomial")
    counts = torch.bincount(group[ancestors], minlength=4)
    weight_of_group = torch.stack([torch.softmax(log_w, 0)[group == g].sum() for g in range(4)])
    assert chi_square_p(counts, weight_of_group) > PASS


def test_resample_systematic():
    g = torch.Generator().manual_seed(1)
    n = 1000
    log_w = 2 * torch.randn(n, generator=g, dtype=torch.float64)
    w = torch.softmax(log_w, 0)
    copies = torch.bincount(resample(log_w, g, "systematic"), minlength=n).double()
    # systematic resampling gives every particle floor(n w) or ceil(n w) copies
    assert torch.all(copies >= torch.floor(n * w - 1e-9)) and torch.all(copies <= torch.ceil(n * w + 1e-9))
    # and is unbiased: E[copies] = n w
    n, reps = 7, 4000
    log_w = torch.tensor([0.0, 0.5, -1.0, 1.5, 0.2, -0.3, 0.8], dtype=torch.float64)
    w = torch.softmax(log_w, 0)
    mean = torch.stack([torch.bincount(resample(log_w, g, "systematic"), minlength=n) for _ in range(reps)]).double()
    se = mean.std(0) / reps ** 0.5
    assert torch.all((mean.mean(0) - n * w).abs() <= 5 * se + 1e-9)
    with pytest.raises(ValueError, match="resampling scheme"):
        resample(log_w, g, "stratified-ish")
