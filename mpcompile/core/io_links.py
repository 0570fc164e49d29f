"""Graph inputs and outputs that cross files in an export folder, by optimum's naming rules.

A decoding loop feeds one file's outputs to the next file's inputs, so both sides must have the
same dtype: ``present.<rest>`` of one step feeds ``past_key_values.<rest>`` of the next
(``present.0.key``, ``present.0.decoder.value``, ``present.0.encoder.key`` of seq2seq models), and
the encoder's ``last_hidden_state`` feeds the decoder's ``encoder_hidden_states``.
"""

from __future__ import annotations

from collections.abc import Iterable

PRESENT = "present."
PAST = "past_key_values."
# (encoder output, decoder input) pairs exchanged whole
PAIRS = (("last_hidden_state", "encoder_hidden_states"),)


def counterparts(name: str) -> set[str]:
    """The names on the other side of the file boundary ``name`` crosses (empty if none)."""
    linked = set()
    if name.startswith(PRESENT) and len(name) > len(PRESENT):
        linked.add(PAST + name.removeprefix(PRESENT))
    if name.startswith(PAST) and len(name) > len(PAST):
        linked.add(PRESENT + name.removeprefix(PAST))
    for output, consumer in PAIRS:
        if name == output:
            linked.add(consumer)
        if name == consumer:
            linked.add(output)
    return linked


def linked_io_names(names: Iterable[str]) -> set[str]:
    """``names`` with every counterpart (see ``counterparts``): the graph inputs and outputs that
    keep one dtype across a folder when the user keeps ``names`` FP32."""
    given = set(names)
    return given | {linked for name in given for linked in counterparts(name)}
