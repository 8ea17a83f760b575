"""ANS coding of code symbols, slot by slot, with constriction's ``AnsCoder``.

A block of n codes (n, h, w, l) is coded slot by slot (cell (i, j), level t; the order is
the prior's), the n symbols of a slot under their coder rows: integer weights (R, A) of a
:class:`CoderTable` and each symbol's row index. The rows come from a prior
(:mod:`discretae.compression.prior`, :mod:`discretae.compression.learned_prior`), whose
quantization keeps every probability at or below ``P_MAX = 2**(-1/32)``: every symbol
costs at least ``MIN_BITS_PER_SYMBOL`` = 1/32 bit, which bounds how many symbols a payload
of a given size can hold (:func:`max_ans_symbols`).

Archive format 3 (``format3=True``) codes a symbol s of an alphabet larger than ``GROUP``
in two stages: its group ``s // GROUP`` under the row's group sums, then ``s % GROUP``
under the row's entries of that group (the last group padded with zero weights, which a
decoder refuses). The integer rows are the same; constriction's cost per symbol grows
with the row's length (one CPU thread: 50 ns for 16 entries, 350 for 256), and the
context tables' group sums are computed once, so two rows of 16 take a third of the
time of one of 256: Fashion-MNIST rvq codes (7x7, 256 codes, 4 levels) decoded in 26 us
an image against 81, in 149.39 bytes against 149.41. Format 3 also codes an end mark
first (decoded last and checked): an empty ANS coder's state is small and stays as it
is while it codes symbols whose range starts at 0, so without it a block of all-zero
codes took no words and ``max_symbols`` refused it as corrupt. Archives of formats 1
and 2 code every symbol in one stage, without the mark (``format3=False``).
"""

from __future__ import annotations

import functools

import constriction
import numpy as np

from discretae.core.errors import DiscretaeError

MIN_BITS_PER_SYMBOL = 1.0 / 32.0
GROUP = 16  # entries per group when a symbol is coded in two stages
# format 3's end mark: twice symbol 1 of two equally likely, coded first. The coder's
# state x then is 3 * 2**23 >= 2**24, above any symbol's frequency f (24-bit precision):
# from x >= f a symbol takes x to at least 2**24 * floor(x / f), so every later symbol
# costs its bits, while from x < f a symbol whose range starts at 0 leaves x as it is
_END_MARK = np.array([1, 1], dtype=np.int32)
_END_MODEL = constriction.stream.model.Categorical(np.array([0.5, 0.5]), perfect=False)


class CoderTable:
    """Coder rows (R, A) float64 (integers), and the same rows as two stages
    (``groups`` (R, G) sums and ``within`` (R, G, GROUP), the last group zero-padded),
    built on first use."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self.n_codes = rows.shape[1]

    def staged(self, format3: bool) -> bool:
        """Whether this table's symbols are coded in two stages: format 3, more than
        ``GROUP`` codes."""
        return format3 and self.n_codes > GROUP

    @functools.cached_property
    def within(self) -> np.ndarray:
        r, a = self.rows.shape
        if a % GROUP == 0:  # a view: no copy of a large table
            return self.rows.reshape(r, -1, GROUP)
        padded = np.zeros((r, -(-a // GROUP) * GROUP))
        padded[:, :a] = self.rows
        return padded.reshape(r, -1, GROUP)

    @functools.cached_property
    def groups(self) -> np.ndarray:
        return self.within.sum(2)


def encode_slots(sym: np.ndarray, rows_by_slot, format3: bool = True) -> np.ndarray:
    """ANS words of the symbols ``sym`` (n, h, w, l): ``rows_by_slot`` gives each slot
    (i, j, t) with its coder rows, a :class:`CoderTable` and the (n,) indices of its
    rows, in reverse coding order (the coder is a stack); ``format3``: two stages
    and the end mark (archive format 3)."""
    coder = constriction.stream.stack.AnsCoder()
    family = constriction.stream.model.Categorical(perfect=False)
    if format3:
        coder.encode_reverse(_END_MARK, _END_MODEL)
    for (i, j, t), (table, idx) in rows_by_slot:
        s = sym[:, i, j, t]
        if table.staged(format3):
            group, rest = np.divmod(s, GROUP)
            coder.encode_reverse(rest.astype(np.int32), family, table.within[idx, group])
            coder.encode_reverse(group.astype(np.int32), family, table.groups[idx])
        else:
            coder.encode_reverse(s.astype(np.int32), family, table.rows[idx])
    return coder.get_compressed()


def decode_slots(words: np.ndarray, order, rows_of, store, format3: bool = True) -> None:
    """Decode ANS words slot by slot in coding ``order``: ``rows_of(slot)`` gives the
    coder rows (a :class:`CoderTable` and (n,) row indices) from the symbols stored so
    far, ``store(slot, symbols)`` keeps the decoded ones; ``format3``: two stages
    and the end mark (archive format 3).
    DiscretaeError unless the words hold exactly these symbols."""
    try:
        coder = constriction.stream.stack.AnsCoder(np.asarray(words, dtype=np.uint32))
        family = constriction.stream.model.Categorical(perfect=False)
        for slot in order:
            table, idx = rows_of(slot)
            if table.staged(format3):
                group = coder.decode(family, table.groups[idx])
                s = group * GROUP + coder.decode(family, table.within[idx, group])
                if s.max(initial=0) >= table.n_codes:
                    raise ValueError(f"a symbol decodes to {s.max()}, past the alphabet")
            else:
                s = coder.decode(family, table.rows[idx])
            store(slot, s)
        if format3 and not np.array_equal(coder.decode(_END_MODEL, 2), _END_MARK):
            raise ValueError("the end mark is missing")
        exact = coder.is_empty()
    except Exception as e:  # constriction reports malformed words as ValueError
        raise DiscretaeError(f"corrupt archive: the code payload does not decode ({e})") from None
    if not exact:
        raise DiscretaeError("corrupt archive: the code payload holds more data than its codes")


def max_ans_symbols(n_words: int) -> int:
    """The most symbols ``n_words`` ANS words can hold when no symbol costs less than
    ``MIN_BITS_PER_SYMBOL``."""
    return int((32 * n_words + 64) / MIN_BITS_PER_SYMBOL)
