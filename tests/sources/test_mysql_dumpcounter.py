"""``sqldump.DumpCounter`` on MySQL's layout (one INSERT line per batch, as MySQL 8's
mysqldump writes it) and on chunks split anywhere: MariaDB's layout runs in
tests/sources/test_mysql.py against a real server."""

from __future__ import annotations

from drkit.sources.sqldump import DumpCounter

MYSQL_DUMP = (
    b"-- MySQL dump 10.13\n"
    b"USE `app`;\n"
    b"CREATE TABLE `t``odd` (\n  `id` int\n);\n"
    b"INSERT INTO `t``odd` VALUES (1,'a),(b'),(2,'it\\'s (x)'),(3,NULL);\n"
    b"INSERT INTO `t``odd` VALUES (4,'\\\\'),(5,'\xff\x00');\n"
    b"CREATE TABLE `empty` (\n  `id` int\n);\n"
    b"USE `other`;\n"
    b"CREATE TABLE `t``odd` (\n  `id` int\n);\n"
    b"INSERT INTO `t``odd` VALUES (9,';');\n"
    b"-- Dump completed on 2026-12-07 22:00:00\n"
)


def test_counts_mysql_layout_in_any_chunking() -> None:
    for size in (1, 7, 64, len(MYSQL_DUMP)):
        counter = DumpCounter()
        for i in range(0, len(MYSQL_DUMP), size):
            counter.feed(MYSQL_DUMP[i : i + size])
        counter.close()
        assert counter.rows == {"app.t`odd": 5, "app.empty": 0, "other.t`odd": 1}
        assert counter.completed


def test_a_cut_dump_is_not_completed() -> None:
    counter = DumpCounter()
    counter.feed(MYSQL_DUMP[: MYSQL_DUMP.index(b"-- Dump completed")])
    counter.close()
    assert not counter.completed
