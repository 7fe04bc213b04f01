"""Diagnostics scenarios (diagnostics.json) with PyMySQL: prints every result, one line per
step, so that a run through sluice can be compared with one directly against MariaDB.
PyMySQL has no binary protocol: steps marked binary run as text.

    python3 diagnostics.py PORT USER PASSWORD DATABASE
"""

import json
import os
import sys

import pymysql
from pymysql.constants import CLIENT

port, user, password, database = sys.argv[1:5]
spec = json.load(open(os.path.join(os.path.dirname(__file__), "diagnostics.json")))


def connect():
    return pymysql.connect(host="127.0.0.1", port=int(port), user=user, password=password,
                           database=database, autocommit=True, connect_timeout=10,
                           client_flag=CLIENT.MULTI_STATEMENTS)


def show(value):
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def run(conn, sql):
    results = []
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            while True:
                rows = cur.fetchall() if cur.description else ()
                results.append(" ".join("(" + ", ".join(show(v) for v in row) + ")" for row in rows))
                if not cur.nextset():
                    break
    except pymysql.err.MySQLError as e:
        results.append(f"error {e.args[0]}: {e.args[1]}")
    return " ;; ".join(results)


setup = connect()
for sql in spec["setup"]:
    run(setup, sql)
setup.close()
for scenario in spec["scenarios"]:
    clients = {"a": connect(), "b": connect()}
    for index, step in enumerate(scenario["steps"]):
        who, sql = step[0], step[1]
        print(f"{scenario['name']} #{index} {who}: {run(clients[who], sql)}")
    for conn in clients.values():
        conn.close()
