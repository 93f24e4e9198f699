import replica


def test_all_is_sorted_and_complete() -> None:
    assert replica.__all__ == sorted(replica.__all__)
    for name in replica.__all__:
        assert hasattr(replica, name), name
    public = {n for n in dir(replica) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(replica.__all__)
