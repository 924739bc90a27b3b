"""Which database failures the persister waits out, and which it sets aside."""

from sqlalchemy.exc import DataError, IntegrityError, OperationalError, StatementError

from consumers.persister import refused_for_good


def test_rows_the_database_refuses_are_set_aside_rather_than_retried_forever():
    assert refused_for_good(IntegrityError("INSERT", {}, Exception("duplicate")))
    assert refused_for_good(DataError("INSERT", {}, Exception("out of range")))
    assert refused_for_good(StatementError("cannot bind", "INSERT", {}, OverflowError()))


def test_an_unreachable_database_is_waited_for():
    assert not refused_for_good(OperationalError("INSERT", {}, Exception("server closed")))
