"""Session-safety scenarios with PyMySQL, run through sluice and directly against MariaDB.

Each scenario prints `name: observation` lines; the Rust test (tests/session_safety.rs) runs
this script both ways and requires identical output. The scenarios are the ways a pooled
connection used to carry one client's session to another: variables set with `SET @@name`
(which MariaDB's session tracking does not report), temporary tables made by a procedure,
`LAST_INSERT_ID(expr)`, multi-byte text before a rewritten function, KILL of oneself. A raw
protocol client also compares the session-tracking entries a client receives.

    python3 session_safety.py --host H --port P --user U --password W --database D \
        [--other-user U2 --other-password W2]
"""

import argparse
import hashlib
import socket
import struct

import pymysql


def connect(args, user=None, password=None):
    return pymysql.connect(
        host=args.host,
        port=args.port,
        user=user or args.user,
        password=password if password is not None else args.password,
        database=args.database,
        autocommit=True,
        connect_timeout=10,
    )


def one(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
        return None if row is None else row[0]


def outcome(conn, sql):
    """The first value of a statement's result, or its error code."""
    try:
        return one(conn, sql)
    except pymysql.err.MySQLError as e:
        return f"error {e.args[0]}"


def lost_write(args):
    # Client A turns autocommit off the way many ORMs do, and stays connected.
    a = connect(args)
    one(a, "SET @@autocommit = 0")
    b = connect(args)
    one(b, "INSERT INTO ss_rows (v) VALUES ('b')")
    b.close()
    c = connect(args)
    print("row written by b after a's SET @@autocommit=0:", one(c, "SELECT COUNT(*) FROM ss_rows WHERE v = 'b'"))
    print("a's own autocommit:", one(a, "SELECT @@autocommit"))
    print("c's autocommit:", one(c, "SELECT @@autocommit"))
    a.rollback()
    a.close()
    c.close()


def variables_do_not_leak(args):
    a = connect(args)
    for sql in [
        "SET @@sql_mode = 'ANSI_QUOTES'",
        "SET @@wait_timeout = 7777",
        "SET @@time_zone = '+03:00', @@div_precision_increment = 9",
        "SET @@local.group_concat_max_len = 4321",
    ]:
        one(a, sql)
    b = connect(args)
    for name in ["sql_mode", "wait_timeout", "time_zone", "div_precision_increment", "group_concat_max_len"]:
        print(f"b's {name}:", one(b, f"SELECT @@{name}"))
        print(f"a's {name}:", one(a, f"SELECT @@{name}"))
    a.close()
    b.close()


def procedure_temp_table_stays_with_its_client(args):
    a = connect(args)
    one(a, "CALL ss_make_temp()")
    print("a sees its temporary table:", outcome(a, "SELECT COUNT(*) FROM ss_tmp"))
    b = connect(args, args.other_user, args.other_password)
    seen = outcome(b, "SELECT COUNT(*) FROM ss_tmp")
    print("another user reads a's temporary table:", "no" if str(seen).startswith("error") else f"yes ({seen})")
    b.close()
    a.close()


def last_insert_id_expressions(args):
    a = connect(args)
    print("LAST_INSERT_ID(42):", one(a, "SELECT LAST_INSERT_ID(42)"))
    print("then LAST_INSERT_ID():", one(a, "SELECT LAST_INSERT_ID()"))
    one(a, "UPDATE ss_seq SET id = LAST_INSERT_ID(id + 1) WHERE id = 100")
    print("after the sequence update:", one(a, "SELECT LAST_INSERT_ID() - (SELECT id FROM ss_seq WHERE id = 101)"))
    print("multi-byte comment:", one(a, "SELECT /*€€*/LAST_INSERT_ID() - (SELECT id FROM ss_seq WHERE id = 101)"))
    a.close()


def kill_of_oneself(args):
    a = connect(args)
    print("KILL QUERY CONNECTION_ID():", outcome(a, "KILL QUERY CONNECTION_ID()"))
    print("still usable:", outcome(a, "SELECT 1"))
    print("KILL CONNECTION_ID():", outcome(a, "KILL CONNECTION_ID()"))
    try:
        one(a, "SELECT 1")
        print("after being killed: still open")
    except pymysql.err.MySQLError:
        print("after being killed: closed")
    b = connect(args)
    print("another client unaffected:", outcome(b, "SELECT 1"))
    b.close()


def stored_program_cursor_then_text_results(args):
    # After a procedure opened a cursor, MariaDB flags later text results with
    # SERVER_STATUS_CURSOR_EXISTS; their rows must still reach this client, not the next.
    a = connect(args)
    with a.cursor() as cur:
        cur.execute("CALL ss_cursor_proc()")
        print("procedure's own result:", cur.fetchall())
        while cur.nextset():
            pass
        cur.execute("SELECT id FROM ss_seq ORDER BY id")
        print("rows after the procedure:", cur.fetchall())
        cur.execute("SELECT 'next' UNION ALL SELECT 'query'")
        print("the query after that:", cur.fetchall())
    b = connect(args)
    print("another client's query:", outcome(b, "SELECT 'mine'"))
    b.close()
    a.close()


# A raw client that asks for session tracking, to see exactly which entries it receives.
def _read(s):
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            raise EOFError
        head += chunk
    n = head[0] | head[1] << 8 | head[2] << 16
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return head[3], body


def _write(s, seq, payload):
    s.sendall(struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload)


def _lenenc(b, i):
    c = b[i]
    if c < 0xFB:
        return c, i + 1
    if c == 0xFC:
        return int.from_bytes(b[i + 1:i + 3], "little"), i + 3
    if c == 0xFD:
        return int.from_bytes(b[i + 1:i + 4], "little"), i + 4
    return int.from_bytes(b[i + 1:i + 9], "little"), i + 9


def _entries(ok):
    i = 1
    _, i = _lenenc(ok, i)
    _, i = _lenenc(ok, i)
    status = ok[i] | ok[i + 1] << 8
    i += 4
    if not status & 0x4000:
        return []
    n, i = _lenenc(ok, i)
    i += n
    total, i = _lenenc(ok, i)
    end, out = i + total, []
    while i < end:
        kind = ok[i]
        n, i = _lenenc(ok, i + 1)
        out.append((kind, ok[i:i + n]))
        i += n
    return out


def tracking_entries(args):
    s = socket.create_connection((args.host, args.port), timeout=10)
    seq, greeting = _read(s)
    i = greeting.index(b"\0", 1) + 1 + 4
    salt = greeting[i:i + 8]
    i += 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10
    salt += greeting[i:i + 12]
    pw = args.password.encode()
    proof = b""
    if pw:
        h1 = hashlib.sha1(pw).digest()
        h2 = hashlib.sha1(salt + hashlib.sha1(h1).digest()).digest()
        proof = bytes(x ^ y for x, y in zip(h1, h2))
    # protocol 41, secure connection, plugin auth, connect with db, session track, deprecate EOF
    caps = 0x200 | 0x8000 | 0x80000 | 0x8 | 0x800000 | 0x1000000 | 0x2000
    login = struct.pack("<IIB23x", caps, 1 << 24, 45) + args.user.encode() + b"\0"
    login += bytes([len(proof)]) + proof + args.database.encode() + b"\0" + b"mysql_native_password\0"
    _write(s, seq + 1, login)
    _, ok = _read(s)
    assert ok[0] == 0, ok
    for sql in [
        "USE mysql",
        "USE " + args.database,
        "SET time_zone = '+01:00'",
        "SET sql_mode = 'ANSI_QUOTES'",
        "SET @@autocommit = 1",
        "SET SESSION session_track_system_variables = 'sql_mode,time_zone'",
        "SET sql_mode = ''",
        "SET time_zone = '+02:00', autocommit = 1",
        "SET SESSION session_track_state_change = ON",
        "SET @ss_x = 1",
        "SET SESSION session_track_schema = OFF",
        "USE mysql",
    ]:
        _write(s, 0, b"\x03" + sql.encode())
        _, reply = _read(s)
        shown = "error" if reply[0] == 0xFF else [(k, d.decode(errors="replace")) for k, d in _entries(reply)]
        print(f"tracking after {sql!r}:", shown)
    s.close()


def main():
    parser = argparse.ArgumentParser()
    for name in ["host", "user", "password", "database"]:
        parser.add_argument("--" + name, required=name != "password", default="")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--other-user")
    parser.add_argument("--other-password", default="")
    args = parser.parse_args()
    if not args.other_user:
        args.other_user, args.other_password = args.user, args.password
    for scenario in [
        lost_write,
        variables_do_not_leak,
        procedure_temp_table_stays_with_its_client,
        last_insert_id_expressions,
        kill_of_oneself,
        stored_program_cursor_then_text_results,
        tracking_entries,
    ]:
        print(f"-- {scenario.__name__}")
        scenario(args)


if __name__ == "__main__":
    main()
