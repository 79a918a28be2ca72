"""Molecular graphs as GDSS (Jo et al. 2022) builds and decodes them: SMILES -> dense (X, A), dense
(X, A) -> RDKit molecules with and without GDSS's valency correction, and canonical SMILES.

A graph of at most N atoms is X (N, F), the one-hot type of each atom over an atom set (a zero row is
no atom), and A (N, N), the bond orders 1 / 2 / 3 of the kekulised molecule; hydrogens are implicit.

Decoding follows GDSS's sampler and ``utils/mol_utils.py`` (``quantize_mol``, ``construct_mol``,
``correct_mol``, ``valid_mol_can_with_seg``):

- atoms: GDSS binarises X at 0.5 and appends a no-atom channel ``1 - sum``, then takes the argmax. So a
  node is absent when all its features are <= 0.5 (or, here, its mask is 0), and otherwise its type is
  the *first* channel above 0.5 (not the largest value);
- bonds: A is symmetrised by averaging, then <0.5 / [0.5, 1.5) / [1.5, 2.5) / >=2.5 give no bond /
  single / double / triple; bonds to absent nodes are dropped;
- charges (``charges=True``, as GDSS's ``construct_mol``): bonds are added one by one (row-major over the
  lower triangle); after each, if the first atom with a valence error is N, O or S exceeding its usual
  valence (3, 2, 2) by exactly one, it gets formal charge +1 ([N+], [O+], [S+]);
- the molecule must pass ``Chem.SanitizeMol`` (else None); a molecule with no atoms is None;
- ``largest_fragment`` keeps the fragment with the most atoms (GDSS keeps the longest SMILES fragment).

:func:`graphs_to_molecules` does no valency correction; :func:`correct_valency` first applies GDSS's
``correct_mol`` (while some atom has a valence error, lower by one the highest-order bond at the first
such atom), so validity with and without correction can be reported separately.
"""
from __future__ import annotations

from typing import Sequence

import torch
from rdkit import Chem, rdBase
from torch import Tensor

ATOM_SETS = {"qm9": ("C", "N", "O", "F"), "zinc": ("C", "N", "O", "F", "P", "S", "Cl", "Br", "I")}

BOND_TYPES = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}

# GDSS's usual valences of the atoms it may charge +1 when they exceed it by one.
CHARGEABLE_VALENCE = {"N": 3, "O": 2, "S": 2}


def smiles_to_graph(smiles: str, atoms: Sequence[str], max_nodes: int) -> tuple[Tensor, Tensor]:
    """(X (max_nodes, len(atoms)), A (max_nodes, max_nodes)) of a kekulised molecule, hydrogens implicit.

    Formal charges are dropped (GDSS's features are atom types only); rows beyond the molecule's atoms
    are zero.
    """
    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"smiles_to_graph: cannot parse SMILES {smiles!r}; pass a valid SMILES string")
    Chem.Kekulize(mol, clearAromaticFlags=True)
    if mol.GetNumAtoms() > max_nodes:
        raise ValueError(f"smiles_to_graph: {smiles!r} has {mol.GetNumAtoms()} heavy atoms, more than "
                         f"max_nodes={max_nodes}; raise max_nodes or drop the molecule")
    index = {symbol: i for i, symbol in enumerate(atoms)}
    x = torch.zeros(max_nodes, len(atoms))
    for atom in mol.GetAtoms():
        symbol = atom.GetSymbol()
        if symbol not in index:
            raise ValueError(f"smiles_to_graph: atom {symbol} of {smiles!r} is not in the atom set "
                             f"{tuple(atoms)}; extend the atoms or drop the molecule")
        x[atom.GetIdx(), index[symbol]] = 1.0
    adj = torch.zeros(max_nodes, max_nodes)
    for bond in mol.GetBonds():
        order = bond.GetBondTypeAsDouble()
        if order not in BOND_TYPES:
            raise ValueError(f"smiles_to_graph: {smiles!r} has a {bond.GetBondType()} bond after kekulisation; "
                             f"only single, double and triple bonds are supported")
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        adj[i, j] = adj[j, i] = order
    return x, adj


def graphs_to_molecules(x: Tensor, adj: Tensor, mask: Tensor, atoms: Sequence[str], largest_fragment: bool = True,
                        charges: bool = True) -> list[Chem.Mol | None]:
    """GDSS's decoding of a batch (x (B, N, F), adj (B, N, N), node mask (B, N)), without valency
    correction: None for each graph that is not a valid molecule (see the module docstring)."""
    return _decode(x, adj, mask, atoms, largest_fragment, charges, correct=False)


def correct_valency(x: Tensor, adj: Tensor, mask: Tensor, atoms: Sequence[str], largest_fragment: bool = True,
                    charges: bool = True) -> list[Chem.Mol | None]:
    """As :func:`graphs_to_molecules`, after GDSS's valency correction (``correct_mol``) of each graph."""
    return _decode(x, adj, mask, atoms, largest_fragment, charges, correct=True)


def to_smiles(mols: Sequence[Chem.Mol | None]) -> list[str]:
    """Canonical SMILES of each molecule, "" for None."""
    return ["" if mol is None else Chem.MolToSmiles(mol) for mol in mols]


def _decode(x: Tensor, adj: Tensor, mask: Tensor, atoms: Sequence[str], largest_fragment: bool, charges: bool,
            correct: bool) -> list[Chem.Mol | None]:
    if x.dim() != 3 or x.shape[-1] != len(atoms):
        raise ValueError(f"x must be (B, N, len(atoms)={len(atoms)}), got {tuple(x.shape)}; pass the atom set "
                         f"the graphs were built with")
    b, n = x.shape[:2]
    if tuple(adj.shape) != (b, n, n) or tuple(mask.shape) != (b, n):
        raise ValueError(f"adj must be (B, N, N) and mask (B, N) for x {tuple(x.shape)}, got {tuple(adj.shape)} "
                         f"and {tuple(mask.shape)}")
    x, adj, mask = x.detach().cpu(), adj.detach().cpu().float(), mask.detach().cpu()
    above = x > 0.5
    present = (above.any(dim=-1) & (mask != 0)).tolist()
    types = above.int().argmax(dim=-1).tolist()  # the first channel above 0.5
    sym = (adj + adj.transpose(-1, -2)) / 2
    orders = ((sym >= 0.5).int() + (sym >= 1.5).int() + (sym >= 2.5).int()).tolist()
    mols = []
    with rdBase.BlockLogs():
        for k in range(b):
            keep = [i for i in range(n) if present[k][i]]
            mol = _build([atoms[types[k][i]] for i in keep], [[orders[k][i][j] for j in keep] for i in keep],
                         charges)
            if correct:
                _correct_mol(mol)
            mols.append(_sanitized(mol, largest_fragment))
    return mols


def _build(symbols: list[str], orders: list[list[int]], charges: bool) -> Chem.RWMol:
    """GDSS's ``construct_mol``: atoms, then bonds one by one, charging N, O, S one over their valence."""
    mol = Chem.RWMol()
    for symbol in symbols:
        mol.AddAtom(Chem.Atom(symbol))
    table = Chem.GetPeriodicTable()
    spare = [table.GetDefaultValence(symbol) for symbol in symbols]  # no valence error while all are >= 0
    for i in range(len(symbols)):
        for j in range(i):
            if orders[i][j]:
                mol.AddBond(i, j, BOND_TYPES[orders[i][j]])
                spare[i] -= orders[i][j]
                spare[j] -= orders[i][j]
                if charges and min(spare) < 0:
                    _charge_first_problem(mol)
    return mol


def _first_valence_problem(mol: Chem.RWMol) -> int | None:
    """Index of the first atom with a valence error, as ``SanitizeMol`` would report it."""
    problems = Chem.DetectChemistryProblems(mol, Chem.SanitizeFlags.SANITIZE_PROPERTIES)
    return problems[0].GetAtomIdx() if problems else None


def _charge_first_problem(mol: Chem.RWMol) -> None:
    idx = _first_valence_problem(mol)
    if idx is None:
        return
    atom = mol.GetAtomWithIdx(idx)
    usual = CHARGEABLE_VALENCE.get(atom.GetSymbol())
    if usual is not None and sum(b.GetBondTypeAsDouble() for b in atom.GetBonds()) - usual == 1:
        atom.SetFormalCharge(1)


def _correct_mol(mol: Chem.RWMol) -> None:
    """GDSS's ``correct_mol``: while an atom has a valence error, lower its highest-order bond by one."""
    while (idx := _first_valence_problem(mol)) is not None:
        bonds = sorted(((b.GetBondTypeAsDouble(), b.GetBeginAtomIdx(), b.GetEndAtomIdx())
                        for b in mol.GetAtomWithIdx(idx).GetBonds()), key=lambda bond: bond[0], reverse=True)
        if not bonds:  # nothing to lower; sanitisation rejects the molecule
            return
        order, start, end = bonds[0]
        mol.RemoveBond(start, end)
        if order > 1:
            mol.AddBond(start, end, BOND_TYPES[int(order) - 1])


def _sanitized(mol: Chem.RWMol, largest_fragment: bool) -> Chem.Mol | None:
    mol = mol.GetMol()
    if mol.GetNumAtoms() == 0:
        return None
    try:
        Chem.SanitizeMol(mol)
    except Chem.MolSanitizeException:
        return None
    if largest_fragment:
        mol = max(Chem.GetMolFrags(mol, asMols=True), key=lambda frag: frag.GetNumAtoms())
    return mol
