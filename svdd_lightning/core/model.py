"""The interface a pretrained diffusion model offers to the decoders.

States are indexed by *level* k = 0 .. num_steps: level 0 is the prior (pure noise / all masked),
level num_steps is a clean sample. One denoising step goes from level k to level k + 1.

The denoiser output (``denoise``) is kept apart from the transition (``propose``) so that a decoder
can evaluate the denoiser once on each candidate, use it for the candidate's value (x0_hat) and,
for the candidate it keeps, reuse it for the next proposal: SVDD then costs M denoiser calls per
step, the same as M independent pretrained samplers.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .objective import FineTuningObjective
from .state import State

Prediction = Any  # what ``denoise`` returns: a tensor or pytree of tensors with leading batch dim


class DiffusionModel(nn.Module, ABC):
    """A frozen pretrained diffusion model seen as a Markov chain p_pre(x_{k+1} | x_k)."""

    num_steps: int
    #: False when the denoiser's output depends on the state only (MDLM without time conditioning):
    #: a row that did not change then reuses its last prediction instead of a new denoiser call.
    denoiser_uses_level: bool = True
    #: Denoiser calls ``propose`` makes itself per proposed row (0 for ancestral samplers; 1 for a
    #: predictor-corrector step whose second half needs the score at the corrected state).
    proposal_denoiser_calls: int = 0
    #: Number of conditions (prompts, class labels) a conditional model samples: sample i is drawn under
    #: condition ``i % num_conditions``, and each condition is its own population (SMC never mixes them).
    num_conditions: int = 1
    #: True when one step of ``x0_samples`` draws x_0 at random (masked models: tokens from the denoiser
    #: output); False when one step is the deterministic x0_hat and draws need rollouts of >= 2 steps.
    random_one_step_x0: bool = False
    #: False when ``propose`` is deterministic (a flow model's ODE step at noise level 0): its M candidates
    #: or resampled particles would be copies, so the decoders that need distinct ones refuse the model
    stochastic_proposals: bool = True

    @abstractmethod
    def initial_state(self, generators: Sequence[torch.Generator], conditions: torch.Tensor | None = None) -> State:
        """One prior sample per generator (level 0); row b under condition ``conditions[b]`` (ids in
        0 .. num_conditions-1; unconditional models ignore them)."""

    @abstractmethod
    def denoise(self, x: State, level: int) -> Prediction:
        """One denoiser evaluation (one NFE per row) on states at ``level``."""

    @abstractmethod
    def propose(
        self, x: State, prediction: Prediction, level: int, generators: Sequence[torch.Generator], num_candidates: int
    ) -> State:
        """Draw ``num_candidates`` states at level + 1 from p_pre(. | x) for every row of ``x``.

        Row b's candidates are rows b*M .. b*M+M-1 of the result and use only ``generators[b]``.
        ``prediction`` is ``denoise(x, level)``; any further denoiser call per candidate is declared
        in ``proposal_denoiser_calls`` (and counted by the decoders).
        """

    @abstractmethod
    def x0_hat(self, x: State, prediction: Prediction, level: int) -> State:
        """Point estimate of the clean state E[x_0 | x_k] (posterior mean / mode), in state form."""

    def x0_estimate(self, x: State, prediction: Prediction, level: int, num_steps: int) -> State:
        """x_0 reached from ``x`` by ``num_steps`` deterministic denoising steps (DDIM with eta = 0, the
        probability-flow ODE); the first step uses ``prediction``, each further one a denoiser call."""
        raise NotImplementedError(f"{type(self).__name__} has no multi-step deterministic x_0 estimate")

    def x0_samples(self, x: State, prediction: Prediction, level: int, generators: Sequence[torch.Generator],
                   num_samples: int, num_steps: int) -> State:
        """``num_samples`` draws of x_0 ~ p(x_0 | x_k) per row, by ``num_steps`` stochastic denoising steps
        from the state's time to 0 (the first uses ``prediction``, each further one is a denoiser call per
        draw). Row b's draws are rows b*n .. b*n+n-1 of the result, drawn in turn from ``generators[b]``.
        Callers pass at most the levels left (``self.num_steps - level``); one step on the last level left is
        a model's deterministic last step where ``random_one_step_x0`` is False."""
        raise NotImplementedError(f"{type(self).__name__} cannot draw x_0 from p(x_0 | x_k) (x0_samples)")

    @abstractmethod
    def decode(self, x0: State) -> list:
        """Clean states -> samples the reward understands (strings, images, molecules)."""

    def denoise_chunk_rows(self) -> int | None:
        """Rows per denoiser call when the decoder sets no ``chunk_size`` (None: the whole batch), e.g. a
        chunk that fits a CPU's caches; may depend on the device the model is on."""
        return None

    def time(self, level: int) -> float:
        """Diffusion time in [0, 1] of ``level`` (1 = noise, 0 = clean), for value networks."""
        return 1.0 - level / self.num_steps

    def forward_noise(self, x0: State, level: int, generators: Sequence[torch.Generator]) -> State:
        """Draw x_k ~ q(x_k | x_0), the forward (noising) process, one row per generator."""
        raise NotImplementedError(f"{type(self).__name__} does not implement its forward (noising) process")

    def guided_prediction(
        self, x: State, level: int, guidance: Callable[[torch.Tensor], torch.Tensor], scale: float
    ) -> Prediction:
        """Denoiser output tilted by the gradient of a differentiable ``guidance`` (DPS)."""
        raise NotImplementedError(f"{type(self).__name__} does not support gradient guidance (DPS)")

    def finetuning_objective(self) -> FineTuningObjective | None:
        """The losses fine-tuning on guided samples minimises for this model family (its pretraining loss and
        its divergence from a reference model); None (the default): it has none of its own."""
        return None
