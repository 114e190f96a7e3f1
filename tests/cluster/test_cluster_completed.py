"""What a node remembers of its receivers' acknowledgements (thinghub/cluster/completed.py):
every sequence for at least half the memory's span and at most all of it, whatever the rate,
and no more than its bound of entries a generation."""

from __future__ import annotations

from thinghub.cluster.completed import Completed


def test_a_sequence_is_remembered_for_half_the_span_at_least_and_the_span_at_most() -> None:
    completed = Completed(remember_s=10.0)
    completed.add(5, now=100.0)
    completed.add(7, now=104.9)
    assert 5 in completed and 7 in completed
    assert 6 not in completed and 8 not in completed
    completed.add(9, now=105.0)  # a new generation: 5 and 7 are the previous one
    assert 5 in completed and 7 in completed and 9 in completed
    completed.add(11, now=110.0)  # another: 5 and 7 are forgotten, 9 is kept
    assert 5 not in completed and 7 not in completed
    assert 9 in completed and 11 in completed


def test_many_acknowledgements_within_the_span_are_all_remembered() -> None:
    completed = Completed(remember_s=120.0)
    for sequence in range(1, 50_001):
        completed.add(sequence, now=1000.0 + sequence / 1000)
    assert all(s in completed for s in (1, 1024, 25_000, 50_000))
    assert 50_001 not in completed


def test_a_generation_holds_at_most_its_bound() -> None:
    completed = Completed(remember_s=120.0, max_entries=4)
    for sequence in range(1, 10):
        completed.add(sequence, now=1000.0)
    # Two generations of four at most: the oldest are forgotten early rather than unbounded.
    assert 1 not in completed
    assert all(s in completed for s in range(6, 10))
