"""Client scenarios (a JSON file such as diagnostics.json or conformance.json) with PyMySQL:
prints every result, one line per step, so that a run through sluice can be compared with
one directly against MariaDB. A step is [who, sql, mode, params]: mode "binary" runs as
text here (PyMySQL has no binary protocol), "reset" sends COM_RESET_CONNECTION, and
"change_user" (which PyMySQL lacks) prints "unsupported". With "metadata" in the spec, each
result set starts with its column definitions.

    python3 scenarios.py PORT USER PASSWORD DATABASE [SPEC]
"""

import json
import os
import sys

import pymysql
from pymysql.constants import CLIENT

# Not among pymysql.constants.COMMAND.
COM_RESET_CONNECTION = 0x1F

port, user, password, database = sys.argv[1:5]
spec_file = sys.argv[5] if len(sys.argv) > 5 else "diagnostics.json"
spec = json.load(open(os.path.join(os.path.dirname(__file__), spec_file)))
metadata = spec.get("metadata", False)


def connect():
    return pymysql.connect(host="127.0.0.1", port=int(port), user=user, password=password,
                           database=database, autocommit=True, connect_timeout=10,
                           client_flag=CLIENT.MULTI_STATEMENTS)


def show(value):
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def columns(cur):
    # The column definitions as the server sent them (PyMySQL keeps them on the result).
    fields = cur._result.fields if cur._result else []
    return "[" + " ".join(
        f"{f.name}:{f.type_code}/{f.charsetnr}/{f.length}/{f.scale}/{f.flags}" for f in fields
    ) + "] "


def run(conn, sql, params):
    results = []
    try:
        with conn.cursor() as cur:
            # Placeholders are %s here; the values are quoted into the text.
            cur.execute(sql.replace("?", "%s") if params else sql, params)
            while True:
                rows = cur.fetchall() if cur.description else ()
                head = columns(cur) if metadata and cur.description else ""
                results.append(head + " ".join(
                    "(" + ", ".join(show(v) for v in row) + ")" for row in rows))
                if not cur.nextset():
                    break
    except pymysql.err.MySQLError as e:
        results.append(f"error {e.args[0]}: {e.args[1]}")
    return " ;; ".join(results)


def reset(conn):
    conn._execute_command(COM_RESET_CONNECTION, b"")
    conn._read_ok_packet()
    return "reset"


setup = connect()
for sql in spec["setup"]:
    run(setup, sql, None)
setup.close()
for scenario in spec["scenarios"]:
    clients = {"a": connect(), "b": connect()}
    for index, step in enumerate(scenario["steps"]):
        who, sql = step[0], step[1]
        mode = step[2] if len(step) > 2 else None
        params = step[3] if len(step) > 3 else None
        if mode == "reset":
            out = reset(clients[who])
        elif mode == "change_user":
            out = "unsupported"
        else:
            out = run(clients[who], sql, params)
        print(f"{scenario['name']} #{index} {who}: {out}")
    for conn in clients.values():
        conn.close()
