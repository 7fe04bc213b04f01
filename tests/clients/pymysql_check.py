#!/usr/bin/env python3
"""PyMySQL, an independent pure-Python client, run against a MySQL-protocol server.

Used by crates/sluice/tests/external_clients.rs against sluice; it passes unchanged against
MariaDB directly, which is the point: sluice must be indistinguishable. Exits 0 only when
every check passed and prints `N passed, N failed` last.
"""
import argparse
import datetime
import decimal
import hashlib
import os
import random
import sys
import tempfile
import traceback

import pymysql
from pymysql.constants import CLIENT

args = None
SUFFIX = f"{random.randrange(1 << 30):x}"


def connect(**kw):
    options = dict(host=args.host, port=args.port, user=args.user, password=args.password,
                   database=args.database, charset="utf8mb4")
    options.update(kw)
    return pymysql.connect(**options)


def expect_error(code, fn):
    try:
        fn()
    except pymysql.err.MySQLError as e:
        assert e.args[0] == code, f"expected error {code}, got {e.args}"
        return
    raise AssertionError(f"expected error {code}, got none")


def check_basics():
    with connect() as c, c.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
        cur.execute("SELECT VERSION()")
        assert "MariaDB" in cur.fetchone()[0]
        cur.execute("SELECT CONNECTION_ID()")
        assert isinstance(cur.fetchone()[0], int)


def check_types_round_trip():
    table = f"types_{SUFFIX}"
    blob = bytes(range(256)) * 4
    row = (2**63 - 1, decimal.Decimal("-12345.6789"), 1.5e300, "héllo 😀",
           blob, datetime.datetime(2026, 11, 24, 12, 34, 56, 789012), None)
    with connect() as c, c.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, b BIGINT, d DECIMAL(12,4),"
                    " f DOUBLE, s VARCHAR(50), bl BLOB, dt DATETIME(6), n INT NULL)")
        try:
            cur.execute(f"INSERT INTO {table} (b, d, f, s, bl, dt, n) VALUES (%s,%s,%s,%s,%s,%s,%s)", row)
            assert cur.lastrowid == 1, cur.lastrowid
            cur.execute(f"INSERT INTO {table} (b) VALUES (1), (2)")
            cur.execute(f"SELECT b, d, f, s, bl, dt, n FROM {table} WHERE id = 1")
            assert cur.fetchone() == row
            assert cur.execute(f"UPDATE {table} SET n = 5 WHERE id > 1") == 2
            c.commit()
        finally:
            cur.execute(f"DROP TABLE {table}")


def check_large_results_and_packets():
    with connect(max_allowed_packet=64 * 1024 * 1024) as c, c.cursor() as cur:
        cur.execute("SELECT seq, CONCAT('row-', seq) FROM seq_1_to_5000")
        rows = cur.fetchall()
        assert len(rows) == 5000 and rows[-1] == (5000, "row-5000")
        cur.execute("SELECT @@max_allowed_packet")
        if cur.fetchone()[0] < 40 * 1024 * 1024:
            print("note: max_allowed_packet below 40 MiB, skipping the >16 MiB checks")
            return
        size = 20 * 1024 * 1024
        cur.execute(f"SELECT REPEAT('a', {size})")
        assert len(cur.fetchone()[0]) == size
        big = b"\x01\x02xyz" * (17 * 1024 * 1024 // 5)  # nothing to escape: one >16 MiB packet
        cur.execute("SELECT LENGTH(x), MD5(x) FROM (SELECT %s AS x) AS t", (big,))
        length, digest = cur.fetchone()
        assert length == len(big) and digest == hashlib.md5(big).hexdigest()


def check_multi_statements_and_procedures():
    with connect(client_flag=CLIENT.MULTI_STATEMENTS) as c, c.cursor() as cur:
        cur.execute("SELECT 1; SELECT 2, 3; DO 0")
        assert cur.fetchall() == ((1,),)
        assert cur.nextset()
        assert cur.fetchall() == ((2, 3),)
        assert cur.nextset()
        assert not cur.nextset()
        cur.execute(f"CREATE OR REPLACE PROCEDURE two_sets_{SUFFIX}() BEGIN SELECT 'a'; SELECT 'b', 'c'; END")
        try:
            cur.execute(f"CALL two_sets_{SUFFIX}()")
            assert cur.fetchall() == (("a",),)
            assert cur.nextset()
            assert cur.fetchall() == (("b", "c"),)
            while cur.nextset():
                pass
        finally:
            cur.execute(f"DROP PROCEDURE two_sets_{SUFFIX}")


def check_errors_keep_the_connection():
    with connect() as c, c.cursor() as cur:
        expect_error(1064, lambda: cur.execute("SELEC 1"))
        expect_error(1146, lambda: cur.execute("SELECT * FROM no_such_table_xyz"))
        table = f"dup_{SUFFIX}"
        cur.execute(f"CREATE TEMPORARY TABLE {table} (id INT PRIMARY KEY)")
        cur.execute(f"INSERT INTO {table} VALUES (1)")
        expect_error(1062, lambda: cur.execute(f"INSERT INTO {table} VALUES (1)"))
        cur.execute("SELECT 42")
        assert cur.fetchone() == (42,)


def check_login_failures():
    expect_error(1049, lambda: connect(database="no_such_db_xyz"))
    expect_error(1045, lambda: connect(password=(args.password or "") + "x"))


def check_select_db_and_ping():
    with connect(database=None) as c, c.cursor() as cur:
        c.select_db(args.database)
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone() == (args.database,)
        c.ping(reconnect=False)


def check_load_data_local_infile():
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        for i in range(1, 1001):
            f.write(f"{i},name {i}\n")
        path = f.name
    try:
        with connect(local_infile=True) as c, c.cursor() as cur:
            cur.execute("CREATE TEMPORARY TABLE li (id INT, name VARCHAR(20))")
            cur.execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE li FIELDS TERMINATED BY ','")
            cur.execute("SELECT COUNT(*), SUM(id) FROM li")
            assert cur.fetchone() == (1000, decimal.Decimal(500500))
    finally:
        os.unlink(path)


def check_transactions():
    table = f"tx_{SUFFIX}"
    with connect() as c, c.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id INT) ENGINE=InnoDB")
        try:
            c.begin()
            cur.execute(f"INSERT INTO {table} VALUES (1)")
            c.rollback()
            cur.execute(f"SELECT COUNT(*) FROM {table}")
            assert cur.fetchone() == (0,)
            c.begin()
            cur.execute(f"INSERT INTO {table} VALUES (2)")
            c.commit()
            cur.execute(f"SELECT id FROM {table}")
            assert cur.fetchall() == ((2,),)
        finally:
            cur.execute(f"DROP TABLE {table}")


CHECKS = [check_basics, check_types_round_trip, check_large_results_and_packets,
          check_multi_statements_and_procedures, check_errors_keep_the_connection,
          check_login_failures, check_select_db_and_ping, check_load_data_local_infile,
          check_transactions]


def main():
    global args
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="")
    parser.add_argument("--database", default="sluice_test")
    args = parser.parse_args()
    passed = failed = 0
    for check in CHECKS:
        try:
            check()
            passed += 1
            print(f"ok   {check.__name__}")
        except Exception:
            failed += 1
            print(f"FAIL {check.__name__}\n{traceback.format_exc()}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
