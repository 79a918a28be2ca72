"""AutoDock Vina docking score of molecules against a protein pocket, as a batched reward.

Per molecule (canonical SMILES): RDKit hydrogens, a seeded ETKDG conformer and MMFF optimisation, meeko's
PDBQT ligand, then ``Vina.dock`` (Vina 1.2 scoring function, one CPU) in the receptor's box. The Vina score is
in kcal/mol, lower is better; the reward is max(0, -score), as in the SVDD molecule experiments. The five
targets of those experiments (MOOD's, Lee et al. 2023) ship in ``assets/molecules/receptors/`` with their boxes
in :data:`TARGET_BOXES`.

Cost on one core, exhaustiveness 1, PARP1: about 0.4 s per QM9-sized molecule (0.3-1 s) and 2.5 s per
drug-like one (1-4 s), plus, once per worker process, about 3 s to start it and 0.9 s for the receptor's grid
maps. Scores vary by about 0.1-0.3 kcal/mol (standard deviation) with ``seed``. Molecules are
docked in ``processes`` spawned worker processes, each with its own Vina maps; a molecule that takes longer
than ``timeout`` seconds is stopped by killing its worker (a new one replaces it) and scores None.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Sequence

from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem

from ...core.reward import Reward
from ...extras import require
from ...paths import find
from .rewards import canonical, qed_score, sa_score

log = logging.getLogger(__name__)

ASSET_RECEPTORS = find("assets/molecules/receptors")

# Box centre and size (x, y, z in Å) of the published targets (MOOD's scorer/docking.py).
TARGET_BOXES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "parp1": ((26.413, 11.282, 27.238), (18.521, 17.479, 19.995)),
    "fa7": ((10.131, 41.879, 32.097), (20.673, 20.198, 21.362)),
    "5ht1b": ((-26.602, 5.277, 17.898), (22.5, 22.5, 22.5)),
    "jak2": ((114.758, 65.496, 11.345), (19.033, 17.929, 20.283)),
    "braf": ((84.194, 6.949, -7.081), (22.032, 19.211, 14.106)),
}


def _message(err: Exception) -> str:
    """An exception of RDKit, meeko or Vina on one line, without SWIG's overload listing."""
    return " ".join(str(err).split("Additional information:")[0].split()) or type(err).__name__


def _vina_score(vina: Any, preparation: Any, smiles: str, seed: int, exhaustiveness: int, num_poses: int) -> float:
    """Best Vina score (kcal/mol) of one molecule; raises when it cannot be prepared or docked."""
    from meeko import PDBQTWriterLegacy

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError("SMILES does not parse")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise ValueError("no 3D conformer (ETKDG)")
    AllChem.MMFFOptimizeMolecule(mol)  # returns -1 without MMFF parameters: the ETKDG conformer is kept
    setups = preparation.prepare(mol)
    pdbqt, ok, error = PDBQTWriterLegacy.write_string(setups[0])
    if not ok:
        raise ValueError(f"meeko: {error.strip()}")
    vina.set_ligand_from_string(pdbqt)
    vina.dock(exhaustiveness=exhaustiveness, n_poses=num_poses)
    return float(vina.energies(n_poses=1)[0][0])


def _serve(conn: Connection, receptor: str, center: Sequence[float], box_size: Sequence[float], seed: int,
           exhaustiveness: int, num_poses: int) -> None:
    """Worker process: compute the receptor's maps once, then dock SMILES from ``conn`` until it sends None.

    Replies ``error or None`` once the maps are ready, then ``(score or None, error or None)`` per molecule.
    meeko and vina, optional dependencies, are imported only here, in the workers.
    """
    RDLogger.DisableLog("rdApp.*")
    try:
        from meeko import MoleculePreparation
        from vina import Vina

        vina = Vina(sf_name="vina", cpu=1, seed=seed + 1, verbosity=0)  # Vina draws a random seed for 0
        vina.set_receptor(receptor)
        vina.compute_vina_maps(center=list(center), box_size=list(box_size))
        preparation = MoleculePreparation()
    except Exception as err:
        conn.send(_message(err))
        return
    conn.send(None)
    while (smiles := conn.recv()) is not None:
        try:
            conn.send((_vina_score(vina, preparation, smiles, seed, exhaustiveness, num_poses), None))
        except Exception as err:
            conn.send((None, _message(err)))


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    ready: bool = False  # maps computed
    smiles: str | None = None  # molecule being docked
    deadline: float = math.inf


class VinaDocking(Reward):
    """Reward max(0, -Vina score) of a molecule docked into a receptor's box; None when it cannot be docked.

    ``receptor`` is a PDBQT file; ``target`` (one of :data:`TARGET_BOXES`) gives the box, and the receptor
    too when ``receptor`` is omitted (the copy in ``assets/molecules/receptors/``); ``center`` and
    ``box_size`` (x, y, z in Å) override the target's box. ``seed`` seeds the conformer and the Vina search,
    so a molecule's score does not depend on its batch. Invalid SMILES (""), molecules RDKit cannot embed,
    that meeko or Vina reject (several fragments, atoms such as B) or that exceed ``timeout`` seconds score
    None.

    Scores are kept per canonical SMILES in ``scores`` (Vina score or None), so a molecule is docked once.
    Counters: ``docked`` molecules docked, ``cached`` samples served from ``scores``, ``failed`` samples
    scored None otherwise (invalid SMILES included), ``timeouts`` molecules stopped at ``timeout``.
    Worker processes live until :meth:`close`; pickling drops them.

    Args:
        receptor: the receptor's PDBQT file (default: the shipped one of ``target``).
        center: box centre (x, y, z) in Å (default: ``target``'s).
        box_size: box size (x, y, z) in Å (default: ``target``'s).
        target: one of parp1, fa7, 5ht1b, jak2, braf: its box and shipped receptor.
        exhaustiveness: Vina's search exhaustiveness.
        processes: worker processes that dock in parallel.
        timeout: seconds after which a molecule's docking is stopped (it scores None).
        seed: seed of the conformer and of the Vina search.
        num_poses: poses Vina keeps; the best score is the reward.
        name: the reward's name in outputs.
    """

    unit = "-Vina score, kcal/mol"

    def __init__(self, receptor: str | None = None, center: Sequence[float] | None = None,
                 box_size: Sequence[float] | None = None, target: str | None = None, exhaustiveness: int = 1,
                 processes: int = 1, timeout: float = 60.0, seed: int = 0, num_poses: int = 1,
                 name: str = "docking") -> None:
        require("vina", "meeko", "gemmi", extra="molecules", feature="VinaDocking")
        from vina import Vina
        if target is not None:
            if target not in TARGET_BOXES:
                raise ValueError(f"VinaDocking.target: unknown target {target!r}; known: {sorted(TARGET_BOXES)}")
            center = TARGET_BOXES[target][0] if center is None else center
            box_size = TARGET_BOXES[target][1] if box_size is None else box_size
            if receptor is None:
                receptor = str(ASSET_RECEPTORS / f"{target}.pdbqt")
        if receptor is None:
            raise ValueError("VinaDocking.receptor: pass a receptor PDBQT file (or a target with a shipped receptor)")
        if not Path(receptor).is_file():
            raise ValueError(f"VinaDocking.receptor: no file at {receptor}")
        try:
            Vina(sf_name="vina", cpu=1, verbosity=0).set_receptor(str(receptor))
        except (TypeError, RuntimeError) as err:
            raise ValueError(f"VinaDocking.receptor: Vina cannot read {receptor}: {_message(err)}") from None
        for field, value in (("center", center), ("box_size", box_size)):
            if value is None:
                raise ValueError(f"VinaDocking.{field}: pass center and box_size (x, y, z in Å) or a target, "
                                 f"one of {sorted(TARGET_BOXES)}")
            if len(value) != 3:
                raise ValueError(f"VinaDocking.{field}: expected 3 numbers (x, y, z in Å), got {list(value)}")
        if min(box_size) <= 0:
            raise ValueError(f"VinaDocking.box_size: sizes must be positive, got {list(box_size)}")
        for field, value, least in (("exhaustiveness", exhaustiveness, 1), ("processes", processes, 1),
                                    ("num_poses", num_poses, 1), ("seed", seed, 0)):
            if value < least:
                raise ValueError(f"VinaDocking.{field} must be at least {least}, got {value}")
        if not timeout > 0:
            raise ValueError(f"VinaDocking.timeout must be positive (seconds), got {timeout}")
        self.receptor = str(receptor)
        self.center = tuple(float(v) for v in center)
        self.box_size = tuple(float(v) for v in box_size)
        self.target, self.exhaustiveness, self.processes = target, exhaustiveness, processes
        self.timeout, self.seed, self.num_poses, self.name = float(timeout), seed, num_poses, name
        self.scores: dict[str, float | None] = {}
        self.docked = self.cached = self.failed = self.timeouts = 0
        self._workers: list[_Worker] = []

    def __call__(self, smiles: Sequence[str]) -> list[float | None]:
        keys = [canonical(s) for s in smiles]
        new = list(dict.fromkeys(k for k in keys if k and k not in self.scores))
        if new:
            self.scores.update(self._dock(new))
        fresh = set(new)
        rewards: list[float | None] = []
        for key in keys:
            score = self.scores.get(key) if key else None
            if key in fresh:
                fresh.discard(key)
                self.docked += score is not None
                self.failed += score is None
            elif key:
                self.cached += 1
            else:
                self.failed += 1
            rewards.append(None if score is None else max(0.0, -score))
        return rewards

    def _dock(self, smiles: list[str]) -> dict[str, float | None]:
        """Vina scores of distinct molecules over the worker processes."""
        pending, scores = smiles[::-1], {}
        try:
            while len(self._workers) < min(self.processes, len(smiles)):
                self._workers.append(self._start())
            while pending or any(w.smiles is not None for w in self._workers):
                for worker in self._workers:
                    if worker.ready and worker.smiles is None and pending:
                        worker.smiles, worker.deadline = pending.pop(), time.monotonic() + self.timeout
                        worker.conn.send(worker.smiles)
                waiting = [w for w in self._workers if not w.ready or w.smiles is not None]
                left = min(w.deadline for w in waiting) - time.monotonic()
                replied = wait([w.conn for w in waiting], timeout=None if left == math.inf else max(0.0, left))
                for worker in waiting:
                    if worker.conn in replied:
                        self._receive(worker, scores)
                    elif worker.smiles is not None and time.monotonic() >= worker.deadline:
                        log.debug("docking of %s stopped after %g s", worker.smiles, self.timeout)
                        self.timeouts += 1
                        scores[worker.smiles] = None
                        self._replace(worker)
        except BaseException:
            self.close()
            raise
        return scores

    def _receive(self, worker: _Worker, scores: dict[str, float | None]) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            if worker.smiles is None:
                raise RuntimeError(f"VinaDocking: a worker exited (code {worker.process.exitcode}) while preparing "
                                   f"receptor {self.receptor}") from None
            log.debug("docking of %s ended its worker (exit code %s)", worker.smiles, worker.process.exitcode)
            scores[worker.smiles] = None
            self._replace(worker)
            return
        if not worker.ready:
            if message is not None:
                raise RuntimeError(f"VinaDocking: cannot prepare receptor {self.receptor}: {message}")
            worker.ready = True
            return
        scores[worker.smiles], error = message
        if error:
            log.debug("docking of %s failed: %s", worker.smiles, error)
        worker.smiles, worker.deadline = None, math.inf

    def _start(self) -> _Worker:
        context = multiprocessing.get_context("spawn")
        conn, child = context.Pipe()
        process = context.Process(target=_serve, daemon=True,
                                  args=(child, self.receptor, self.center, self.box_size, self.seed,
                                        self.exhaustiveness, self.num_poses))
        process.start()
        child.close()
        return _Worker(process, conn)

    def _replace(self, worker: _Worker) -> None:
        self._stop(worker)
        self._workers[self._workers.index(worker)] = self._start()

    @staticmethod
    def _stop(worker: _Worker) -> None:
        if worker.ready and worker.smiles is None and worker.process.is_alive():
            try:
                worker.conn.send(None)
                worker.process.join(5.0)
            except OSError:
                pass
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        for worker in self._workers:
            self._stop(worker)
        self._workers = []

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_workers": []}


class DockingQEDSA(Reward):
    """MOOD's drug-design objective (Lee et al. 2023): normalised docking x QED x normalised SA, in [0, 1].

    DS^ = min(20, max(0, -Vina score)) / 20 and SA^ = (10 - SA) / 9, so a molecule scores high only when it
    binds, is drug-like and is easy to make. A molecule that is invalid or cannot be docked scores None.
    Docking keeps its cache and worker processes (``docking.scores``, :meth:`close`).

    Args:
        docking: the :class:`VinaDocking` reward of the target.
        name: the reward's name in outputs.
    """

    unit = "DS^ x QED x SA^, 0-1"

    def __init__(self, docking: VinaDocking, name: str = "docking_qed_sa") -> None:
        if not isinstance(docking, VinaDocking):
            raise ValueError(f"DockingQEDSA.docking must be a VinaDocking reward, got {type(docking).__name__}")
        self.docking, self.name = docking, name

    def __call__(self, smiles: Sequence[str]) -> list[float | None]:
        rewards: list[float | None] = []
        for s, dock in zip(smiles, self.docking(smiles)):
            qed, sa = qed_score(s), sa_score(s)
            rewards.append(None if dock is None or qed is None else min(dock, 20.0) / 20.0 * qed * sa)
        return rewards

    def close(self) -> None:
        self.docking.close()
