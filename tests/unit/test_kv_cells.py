"""The KV cell bookkeeping: shared prefixes counted once, freed cells never named again."""

from __future__ import annotations

from neuron.engine.cells import CellMap


def test_evaluated_cells_add_up() -> None:
    cells = CellMap(3)
    cells.extend(0, 100)
    cells.extend(0, 1)
    cells.extend(1, 50)
    assert (cells.used, cells.length(0), cells.length(1), cells.length(2)) == (151, 101, 50, 0)
    assert (cells.exclusive(0), cells.exclusive(1)) == (101, 50)


def test_a_copied_prefix_is_counted_once() -> None:
    cells = CellMap(3)
    cells.extend(0, 2000)  # a system prompt and conversation A
    cells.copy(0, 1, 1800)  # conversation B shares the system prompt
    cells.extend(1, 300)
    assert cells.used == 2300
    assert cells.exclusive(0) == 200 and cells.exclusive(1) == 300
    cells.clear(0)
    assert cells.used == 2100 and cells.exclusive(1) == 2100


def test_a_copy_of_a_copy_still_names_the_first_cells() -> None:
    cells = CellMap(3)
    cells.extend(0, 1000)
    cells.copy(0, 1, 800)
    cells.extend(1, 100)
    cells.copy(1, 2, 850)  # 800 of sequence 0's cells, 50 of sequence 1's
    assert cells.used == 1100
    assert cells.exclusive(2) == 0


def test_cells_evaluated_after_a_trim_are_new_even_where_a_copy_keeps_the_old_ones() -> None:
    cells = CellMap(2)
    cells.extend(0, 500)
    cells.copy(0, 1, 500)
    cells.trim(0, 200)  # sequence 1 still holds positions 200..499 of the old cells
    cells.extend(0, 300)  # new cells at the same positions
    assert cells.used == 800
    assert cells.exclusive(0) == 300 and cells.exclusive(1) == 300


def test_sharing_moves_a_restored_prefix_onto_the_lenders_cells() -> None:
    cells = CellMap(3)
    cells.extend(0, 1500)  # conversation B: system prompt of 1 000 + its own 500
    cells.extend(1, 1300)  # conversation A restored from RAM: the same 1 000 + its own 300
    assert cells.used == 2800
    cells.share(0, 1, 1000)
    assert cells.used == 1800 and cells.length(1) == 1300
    cells.extend(1, 10)  # A's new turn
    assert cells.used == 1810 and cells.exclusive(1) == 310
    cells.clear(0)
    assert cells.used == 1310
