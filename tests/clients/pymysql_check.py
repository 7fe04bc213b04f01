#!/usr/bin/env python3
"""PyMySQL, an independent pure-Python client, run against a MySQL-protocol server.

Used by crates/sluice/tests/external_clients.rs against sluice; it passes unchanged against
MariaDB directly, which is the point: sluice must be indistinguishable from the server.

    python3 tests/clients/pymysql_check.py --host 127.0.0.1 --port 3306 \
        --user root --password '' --database sluice_test

Every check is one function; tables and procedures get a random suffix and are dropped
afterwards (over a fresh connection, even when the check failed). A failed check prints
`FAIL <name>: <reason>` and its traceback, a skipped one `SKIP <name>: <reason>`. The last
line is always `N passed, N failed`; the exit status is 0 only when nothing failed.

Server settings the checks rely on: `local_infile` ON (LOAD DATA LOCAL), and
`max_allowed_packet` of at least 20 MiB + 64 KiB for the 20 MiB row and 18 MiB for the
17 MiB INSERT (each is skipped, with a note, below that; MariaDB's default is 16 MiB, the
test server here has 64 MiB); the client raises its own limit to 64 MiB. The 5,000-row
check reads MariaDB's sequence engine (`seq_1_to_5000`). The transactions check holds two
connections at once, one inside a transaction, so a gateway needs two backend connections.
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

try:
    import pymysql
    import pymysql.cursors
    from pymysql.constants import CLIENT
except ImportError:
    print("PyMySQL is not installed: pip install pymysql")
    print("0 passed, 1 failed")
    sys.exit(2)

MiB = 1024 * 1024
args = None
SUFFIX = f"{random.randrange(1 << 32):08x}"


class CheckFailed(Exception):
    """A check's expectation did not hold (unlike `assert`, survives `python3 -O`)."""


class Skip(Exception):
    """The server cannot run this check (a setting too small); not a failure."""


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def equal(actual, expected, what):
    if actual != expected:
        raise CheckFailed(f"{what}: expected {expected!r}, got {actual!r}")


def short(value, limit=120):
    text = repr(value)
    if len(text) <= limit:
        return text
    size = len(value) if hasattr(value, "__len__") else len(text)
    return f"{text[:limit]}... ({size} long)"


def connect(**kw):
    options = dict(host=args.host, port=args.port, user=args.user, password=args.password,
                   database=args.database, charset="utf8mb4", connect_timeout=args.timeout,
                   read_timeout=args.timeout, write_timeout=args.timeout)
    if args.ssl_ca:
        options["ssl"] = {"ca": args.ssl_ca}
    elif args.ssl_disabled:
        options["ssl_disabled"] = True
    options.update(kw)
    return pymysql.connect(**options)


def expect_error(code, error_class, fn, what):
    """Runs `fn`, which must fail with MySQL error `code` raised as `error_class`."""
    try:
        fn()
    except pymysql.err.MySQLError as e:
        got = e.args[0] if e.args else None
        equal(got, code, f"{what}: error code (message {e.args[1:]!r})")
        expect(isinstance(e, error_class),
               f"{what}: expected {error_class.__name__}, got {type(e).__name__} {e.args!r}")
        return e
    raise CheckFailed(f"{what}: expected error {code}, got none")


def still_works(cur, what):
    cur.execute("SELECT 42")
    equal(cur.fetchone(), (42,), f"SELECT 42 after {what}")


CLEANUP = []


def drop_later(kind, name):
    """Drops a table or procedure after the check, whether it passed or not, over a fresh
    connection: by then the check's own connections are closed, so no lock is held."""
    CLEANUP.append(f"DROP {kind} IF EXISTS `{name}`")


def run_cleanup():
    statements = CLEANUP[:]
    CLEANUP.clear()
    if not statements:
        return
    try:
        with connect(autocommit=True) as c, c.cursor() as cur:
            cur.execute("SET SESSION lock_wait_timeout = 10")
            for sql in statements:
                cur.execute(sql)
    except Exception as e:
        print(f"warning: cleanup ({'; '.join(statements)}) failed: {short(e, 300)}", flush=True)


def max_allowed_packet(cur):
    cur.execute("SELECT @@max_allowed_packet")
    return int(cur.fetchone()[0])


# ---------------------------------------------------------------------------- checks


def check_connect_and_basics():
    with connect() as c, c.cursor() as cur:
        equal(cur.execute("SELECT 1"), 1, "rowcount of SELECT 1")
        equal(cur.fetchall(), ((1,),), "SELECT 1")
        equal(cur.description[0][0], "1", "column name of SELECT 1")
        cur.execute("SELECT VERSION()")
        version = cur.fetchone()[0]
        expect(isinstance(version, str) and version.strip(), f"VERSION() is empty: {version!r}")
        cur.execute("SELECT CONNECTION_ID()")
        first = cur.fetchone()[0]
        expect(isinstance(first, int) and first > 0, f"CONNECTION_ID() not a positive int: {first!r}")
        with connect() as other, other.cursor() as cur2:
            cur2.execute("SELECT CONNECTION_ID()")
            second = cur2.fetchone()[0]
            expect(isinstance(second, int) and second != first,
                   f"two connections share CONNECTION_ID() {first!r} / {second!r}")
        cur.execute("SELECT CONNECTION_ID()")
        equal(cur.fetchone()[0], first, "CONNECTION_ID() asked again on the same connection")


def check_transport():
    """With --ssl-ca, every connection is TLS (checked by the socket's own say)."""
    if not args.ssl_ca:
        raise Skip("plain connections (no --ssl-ca)")
    with connect() as c:
        version = getattr(c._sock, "version", lambda: None)()
        expect(version is not None and version.startswith("TLS"),
               f"not a TLS connection: {version!r}")


def check_types_round_trip():
    table = f"pymysql_types_{SUFFIX}"
    blob = bytes(range(256)) * 4
    row = (
        -2147483648,                                          # INT
        2**63 - 1,                                            # BIGINT max
        -(2**63),                                             # BIGINT min
        2**64 - 1,                                            # BIGINT UNSIGNED max
        decimal.Decimal("-12345678901234567890.0123456789"),  # DECIMAL(30,10)
        0.1,                                                  # DOUBLE
        1.5e300,                                              # DOUBLE
        "héllo 😀 ✓ 日本 \U0001F9D1\u200D\U0001F4BB '\\\"",       # VARCHAR utf8mb4
        blob,                                                 # BLOB, every byte value
        datetime.datetime(2026, 11, 24, 12, 34, 56, 789012),  # DATETIME(6)
        None,                                                 # NULL
    )
    columns = ("i", "b", "bn", "ub", "d", "f", "f2", "s", "bl", "dt", "n")
    with connect() as c, c.cursor() as cur:
        drop_later("TABLE", table)
        cur.execute(f"CREATE TABLE {table} (id INT AUTO_INCREMENT PRIMARY KEY, i INT, b BIGINT,"
                    " bn BIGINT, ub BIGINT UNSIGNED, d DECIMAL(30,10), f DOUBLE, f2 DOUBLE,"
                    " s VARCHAR(100), bl BLOB, dt DATETIME(6), n INT NULL)"
                    " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
        placeholders = ",".join(["%s"] * len(row))
        equal(cur.execute(f"INSERT INTO {table} ({','.join(columns)}) VALUES ({placeholders})",
                          row), 1, "rowcount of INSERT")
        equal(cur.lastrowid, 1, "lastrowid after the first auto-increment INSERT")
        equal(c.insert_id(), 1, "insert_id() after the first auto-increment INSERT")
        equal(cur.execute(f"INSERT INTO {table} (i) VALUES (7), (7), (8)"), 3,
              "rowcount of a three-row INSERT")
        equal(cur.lastrowid, 2, "lastrowid after a multi-row INSERT (its first id)")
        cur.execute("SELECT LAST_INSERT_ID()")
        equal(cur.fetchone(), (2,), "LAST_INSERT_ID()")
        c.commit()

        cur.execute(f"SELECT {','.join(columns)} FROM {table} WHERE id = 1")
        got = cur.fetchone()
        equal(len(got), len(row), "column count")
        for name, want, have in zip(columns, row, got):
            equal(type(have), type(want), f"Python type of column {name}")
            if have != want:
                raise CheckFailed(f"column {name}: expected {short(want)}, got {short(have)}")
        equal([d[0] for d in cur.description], list(columns), "column names")

        # Affected rows: changed rows by default, matched rows under CLIENT_FOUND_ROWS.
        equal(cur.execute(f"UPDATE {table} SET i = 8 WHERE id > 1"), 2,
              "rowcount of UPDATE (3 matched, 2 changed)")
        equal(cur.rowcount, 2, "cursor.rowcount after UPDATE")
        c.commit()
        with connect(client_flag=CLIENT.FOUND_ROWS) as c2, c2.cursor() as cur2:
            cur2.execute(f"UPDATE {table} SET i = 9 WHERE id IN (2, 3)")
            cur2.execute(f"UPDATE {table} SET i = 9 WHERE id > 1")
            equal(cur2.rowcount, 3, "rowcount of UPDATE under CLIENT_FOUND_ROWS (matched rows)")
            c2.commit()
        equal(cur.execute(f"DELETE FROM {table} WHERE id > 1"), 3, "rowcount of DELETE")
        c.commit()

        # (MariaDB identifiers are utf8mb3: no 4-byte characters in the alias.)
        cur.execute("SELECT '😀' AS `é✓日`, CAST(NULL AS CHAR) AS nothing")
        equal(cur.fetchone(), ("😀", None), "emoji literal and NULL")
        equal(cur.description[0][0], "é✓日", "non-ASCII column alias")


def check_5000_row_result():
    with connect() as c:
        with c.cursor() as cur:
            equal(cur.execute("SELECT seq, CONCAT('row-', seq, '-', REPEAT('x', seq % 100))"
                              " FROM seq_1_to_5000"), 5000, "rowcount of the 5,000-row SELECT")
            rows = cur.fetchall()
            equal(len(rows), 5000, "rows fetched")
            for i, (n, text) in enumerate(rows, 1):
                if n != i or text != f"row-{i}-{'x' * (i % 100)}":
                    raise CheckFailed(f"row {i}: got {(n, text)!r}")
        # The same rows streamed with an unbuffered cursor, then the connection is reused.
        with c.cursor(pymysql.cursors.SSCursor) as cur:
            cur.execute("SELECT seq FROM seq_1_to_5000")
            total = count = 0
            for (n,) in cur.fetchall_unbuffered():
                total += n
                count += 1
            equal((count, total), (5000, 5000 * 5001 // 2), "streamed rows (count, sum)")
        with c.cursor() as cur:
            still_works(cur, "an unbuffered result")


def check_20_mib_result_row():
    size = 20 * MiB
    with connect(max_allowed_packet=64 * MiB) as c, c.cursor() as cur:
        limit = max_allowed_packet(cur)
        if limit < size + 64 * 1024:
            raise Skip(f"@@max_allowed_packet is {limit}, a {size}-byte row needs more")
        cur.execute(f"SELECT REPEAT('a', {size}), 'after'")
        value, after = cur.fetchone()
        expect(value is not None, "REPEAT returned NULL (server max_allowed_packet too small?)")
        equal(len(value), size, "length of the 20 MiB value (a row split over several packets)")
        expect(value == "a" * size, "the 20 MiB value is not all 'a'")
        equal(after, "after", "the column after the 20 MiB value")
        cur.execute(f"SELECT MD5(REPEAT('a', {size}))")
        equal(cur.fetchone()[0], hashlib.md5(b"a" * size).hexdigest(), "server-side MD5")
        still_works(cur, "a 20 MiB row")


def check_17_mib_parameter_insert():
    table = f"pymysql_big_{SUFFIX}"
    big = bytes(range(256)) * (17 * MiB // 256)  # escaped, the INSERT is ~17.3 MiB
    with connect(max_allowed_packet=64 * MiB) as c, c.cursor() as cur:
        limit = max_allowed_packet(cur)
        if limit < len(big) + MiB:
            raise Skip(f"@@max_allowed_packet is {limit}, a {len(big)}-byte INSERT needs more")
        drop_later("TABLE", table)
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, v LONGBLOB) ENGINE=InnoDB")
        equal(cur.execute(f"INSERT INTO {table} VALUES (1, %s)", (big,)), 1,
              "rowcount of the >16 MiB INSERT")
        c.commit()
        cur.execute(f"SELECT LENGTH(v), MD5(v) FROM {table} WHERE id = 1")
        equal(cur.fetchone(), (len(big), hashlib.md5(big).hexdigest()),
              "LENGTH and MD5 of the stored >16 MiB value")
        cur.execute(f"SELECT v FROM {table} WHERE id = 1")
        back = cur.fetchone()[0]
        expect(back == big, f"the >16 MiB value read back differs ({len(back)} bytes)")
        still_works(cur, "a >16 MiB INSERT")


def check_multi_statements():
    table = f"pymysql_multi_{SUFFIX}"
    with connect(client_flag=CLIENT.MULTI_STATEMENTS) as c, c.cursor() as cur:
        drop_later("TABLE", table)
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
        cur.execute(f"INSERT INTO {table} VALUES (1, 0), (2, 0), (3, 0)")
        c.commit()
        cur.execute(f"SELECT 1; SELECT 2, 3 UNION ALL SELECT 4, 5; UPDATE {table} SET v = 1"
                    f" WHERE id < 3; SELECT COUNT(*) FROM {table} WHERE v = 1")
        equal(cur.fetchall(), ((1,),), "result set 1")
        expect(cur.nextset(), "no result set 2")
        equal(cur.fetchall(), ((2, 3), (4, 5)), "result set 2")
        expect(cur.nextset(), "no result 3 (the UPDATE)")
        equal(cur.description, None, "description of the UPDATE result")
        equal(cur.rowcount, 2, "rowcount of the UPDATE inside the batch")
        expect(cur.nextset(), "no result set 4")
        equal(cur.fetchall(), ((2,),), "result set 4")
        expect(not cur.nextset(), "an unexpected fifth result")
        c.commit()
        # An error part-way ends the batch: the first result arrives, the error follows
        # in place of the second, and the connection is fine afterwards.
        cur.execute("SELECT 'first'; SELEC 2; SELECT 3")
        equal(cur.fetchall(), (("first",),), "result before the failing statement")
        expect_error(1064, pymysql.err.ProgrammingError, cur.nextset,
                     "syntax error in the second statement of a batch")
        expect(not cur.nextset(), "a result after the failed statement of a batch")
        still_works(cur, "a failed batch")


def check_stored_procedure_two_result_sets():
    proc = f"pymysql_two_sets_{SUFFIX}"
    with connect() as c, c.cursor() as cur:
        drop_later("PROCEDURE", proc)
        cur.execute(f"CREATE PROCEDURE {proc}(IN x INT) BEGIN SELECT 'a', x; SELECT 'b', x + 1"
                    " UNION ALL SELECT 'c', x + 2; END")
        cur.execute(f"CALL {proc}(%s)", (10,))
        equal(cur.fetchall(), (("a", 10),), "CALL result set 1")
        expect(cur.nextset(), "CALL: no result set 2")
        equal(cur.fetchall(), (("b", 11), ("c", 12)), "CALL result set 2")
        expect(cur.nextset(), "CALL: no final OK result")
        equal(cur.description, None, "description of the CALL's final OK")
        expect(not cur.nextset(), "CALL: an unexpected result after the final OK")
        still_works(cur, "a CALL")
        cur.execute(f"CALL {proc}(1)")  # left unread: the next execute must skip it
        cur.execute("SELECT 'next'")
        equal(cur.fetchone(), ("next",), "SELECT after an unread CALL")


def check_errors_keep_the_connection():
    table = f"pymysql_dup_{SUFFIX}"
    with connect() as c, c.cursor() as cur:
        e = expect_error(1064, pymysql.err.ProgrammingError, lambda: cur.execute("SELEC 1"),
                         "syntax error")
        expect("syntax" in str(e.args[1]).lower(), f"1064 message: {e.args[1]!r}")
        still_works(cur, "1064")
        e = expect_error(1146, pymysql.err.ProgrammingError,
                         lambda: cur.execute("SELECT * FROM no_such_table_xyz"), "unknown table")
        expect("no_such_table_xyz" in e.args[1], f"1146 message: {e.args[1]!r}")
        still_works(cur, "1146")
        drop_later("TABLE", table)
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY) ENGINE=InnoDB")
        cur.execute(f"INSERT INTO {table} VALUES (1)")
        c.commit()
        expect_error(1062, pymysql.err.IntegrityError,
                     lambda: cur.execute(f"INSERT INTO {table} VALUES (1)"), "duplicate key")
        still_works(cur, "1062")
        cur.execute(f"SELECT COUNT(*) FROM {table}")
        equal(cur.fetchone(), (1,), "rows after the failed INSERT")


def check_unknown_database_at_connect():
    expect_error(1049, pymysql.err.OperationalError,
                 lambda: connect(database="no_such_db_xyz").close(), "connect to an unknown database")


def check_wrong_password():
    wrong = args.password + "x" if args.password else "wrong"
    e = expect_error(1045, pymysql.err.OperationalError,
                     lambda: connect(password=wrong).close(), "connect with a wrong password")
    expect("Access denied" in e.args[1], f"1045 message: {e.args[1]!r}")
    with connect() as c, c.cursor() as cur:
        still_works(cur, "a refused login (the right password still works)")


def check_select_db():
    with connect(database=None) as c, c.cursor() as cur:
        cur.execute("SELECT DATABASE()")
        equal(cur.fetchone(), (None,), "DATABASE() when connected without one")
        c.select_db(args.database)
        cur.execute("SELECT DATABASE()")
        equal(cur.fetchone(), (args.database,), "DATABASE() after select_db")
        c.select_db("information_schema")
        cur.execute("SELECT DATABASE()")
        equal(cur.fetchone(), ("information_schema",), "DATABASE() after a second select_db")
        expect_error(1049, pymysql.err.OperationalError, lambda: c.select_db("no_such_db_xyz"),
                     "select_db of an unknown database")
        cur.execute("SELECT DATABASE()")
        equal(cur.fetchone(), ("information_schema",), "DATABASE() after a failed select_db")
        c.select_db(args.database)
        cur.execute("SELECT DATABASE()")
        equal(cur.fetchone(), (args.database,), "DATABASE() after select_db back")


def check_ping():
    with connect() as c, c.cursor() as cur:
        for _ in range(3):
            c.ping(reconnect=False)
        expect(c.open, "connection not open after ping")
        still_works(cur, "ping")
        c.ping(reconnect=False)


def check_load_data_local_infile():
    table = f"pymysql_infile_{SUFFIX}"
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".csv", delete=False) as f:
        for i in range(1, 1001):
            f.write(f"{i},name {i} ✓\n")
        path = f.name
    try:
        with connect(local_infile=True) as c, c.cursor() as cur:
            drop_later("TABLE", table)
            cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(40))"
                        " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
            sql = (f"LOAD DATA LOCAL INFILE %s INTO TABLE {table} CHARACTER SET utf8mb4"
                   " FIELDS TERMINATED BY ','")
            equal(cur.execute(sql, (path,)), 1000, "rowcount of LOAD DATA LOCAL INFILE")
            c.commit()
            cur.execute(f"SELECT COUNT(*), SUM(id), MAX(id) FROM {table}")
            equal(cur.fetchone(), (1000, decimal.Decimal(500500), 1000), "COUNT, SUM, MAX(id)")
            cur.execute(f"SELECT name FROM {table} WHERE id = 777")
            equal(cur.fetchone(), ("name 777 ✓",), "row 777")
            # A file the client cannot open: it sends an empty file, the server answers,
            # and PyMySQL raises its own 1017; the connection stays usable.
            missing = path + ".missing"
            expect_error(1017, pymysql.err.OperationalError,
                         lambda: cur.execute(sql, (missing,)), "LOAD DATA of a missing file")
            still_works(cur, "LOAD DATA of a missing file")
            cur.execute(f"SELECT COUNT(*) FROM {table}")
            equal(cur.fetchone(), (1000,), "rows after the missing-file LOAD DATA")
    finally:
        os.unlink(path)


def check_transactions():
    table = f"pymysql_tx_{SUFFIX}"
    with connect(autocommit=True) as c, c.cursor() as cur, \
            connect(autocommit=True) as observer, observer.cursor() as seen:
        drop_later("TABLE", table)
        cur.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY) ENGINE=InnoDB")

        def visible():
            seen.execute(f"SELECT id FROM {table} ORDER BY id")
            return [r[0] for r in seen.fetchall()]

        # Explicit transactions on an autocommit connection.
        c.begin()
        cur.execute(f"INSERT INTO {table} VALUES (1)")
        cur.execute(f"SELECT COUNT(*) FROM {table}")
        equal(cur.fetchone(), (1,), "own uncommitted row inside the transaction")
        equal(visible(), [], "another connection sees an uncommitted row")
        c.rollback()
        cur.execute(f"SELECT COUNT(*) FROM {table}")
        equal(cur.fetchone(), (0,), "rows after begin/insert/rollback")
        c.begin()
        cur.execute(f"INSERT INTO {table} VALUES (2)")
        equal(visible(), [], "another connection sees an uncommitted row")
        c.commit()
        equal(visible(), [2], "rows another connection sees after begin/insert/commit")

        # Implicit transactions: autocommit off (PyMySQL's default).
        c.autocommit(False)
        cur.execute(f"INSERT INTO {table} VALUES (3)")
        equal(visible(), [2], "another connection sees an uncommitted row (autocommit=0)")
        c.rollback()
        cur.execute(f"INSERT INTO {table} VALUES (4)")
        c.commit()
        cur.execute(f"SELECT id FROM {table} ORDER BY id")
        equal(cur.fetchall(), ((2,), (4,)), "rows after rollback then commit with autocommit=0")
        equal(visible(), [2, 4], "rows another connection sees with autocommit=0")
        c.autocommit(True)


def check_close():
    c = connect()
    with c.cursor() as cur:
        still_works(cur, "connect")
    c.close()
    expect(not c.open, "connection still open after close()")
    try:
        c.close()
    except pymysql.err.Error:
        pass
    else:
        raise CheckFailed("a second close() did not raise")
    try:
        c.cursor().execute("SELECT 1")
    except pymysql.err.Error:
        pass
    else:
        raise CheckFailed("a query on a closed connection did not raise")
    # Many quick open/close cycles (a gateway must not leak or stall on them).
    for i in range(20):
        with connect() as c2, c2.cursor() as cur:
            cur.execute("SELECT %s", (i,))
            equal(cur.fetchone(), (i,), f"SELECT on reconnect #{i}")


CHECKS = [
    check_connect_and_basics,
    check_transport,
    check_types_round_trip,
    check_5000_row_result,
    check_20_mib_result_row,
    check_17_mib_parameter_insert,
    check_multi_statements,
    check_stored_procedure_two_result_sets,
    check_errors_keep_the_connection,
    check_unknown_database_at_connect,
    check_wrong_password,
    check_select_db,
    check_ping,
    check_load_data_local_infile,
    check_transactions,
    check_close,
]


def main():
    global args
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default="")
    parser.add_argument("--database", default="sluice_test")
    parser.add_argument("--timeout", type=int, default=60,
                        help="seconds to wait on any one socket read or write")
    parser.add_argument("--ssl-ca", default=None,
                        help="connect with TLS, trusting this PEM authority (host name checked)")
    parser.add_argument("--ssl-disabled", action="store_true",
                        help="never TLS, even when the server offers it")
    parser.add_argument("--only", action="append", default=[],
                        help="run only checks whose name contains this (repeatable)")
    args = parser.parse_args()
    print(f"PyMySQL {pymysql.__version__} against {args.host}:{args.port} "
          f"as {args.user!r}, database {args.database!r}, suffix {SUFFIX}", flush=True)
    passed = failed = 0
    for check in CHECKS:
        name = check.__name__
        if args.only and not any(part in name for part in args.only):
            continue
        try:
            check()
        except Skip as e:
            print(f"SKIP {name}: {e}", flush=True)
            continue
        except Exception as e:
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {short(e, 500)}\n"
                  f"{traceback.format_exc()}", flush=True)
            continue
        finally:
            run_cleanup()
        passed += 1
        print(f"ok   {name}", flush=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
