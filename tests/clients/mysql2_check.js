// Server-side prepared statements (mysql2's `execute`: COM_STMT_PREPARE / COM_STMT_EXECUTE)
// against a MySQL-protocol endpoint: every column type round-trips as a parameter and as a
// result, NULLs, statement close and re-prepare, a failing statement, and many concurrent
// connections. Run against MariaDB directly and through sluice; both must pass.
//
//   node mysql2_check.js PORT USER PASSWORD DATABASE [CONNECTIONS]
//
// Prints one line per check and "N passed, M failed"; exits 1 when any check failed.
'use strict';

const mysql = require('mysql2/promise');
const assert = require('node:assert/strict');

const [port, user, password, database, connectionsArg] = process.argv.slice(2);
const CONNECTIONS = Number(connectionsArg || 50);
const options = {
  host: '127.0.0.1',
  port: Number(port),
  user,
  password,
  database,
  supportBigNumbers: true,
  bigNumberStrings: true,
  dateStrings: true,
};

const ALL_BYTES = Buffer.from([...Array(256).keys()]);
const BITS = Buffer.from([0x80, 0, 0, 0, 0, 0, 0, 1]);
// Column name, value bound as a parameter, value expected back.
const COLUMNS = [
  ['ti TINYINT', -128, -128],
  ['tu TINYINT UNSIGNED', 255, 255],
  ['si SMALLINT', -32768, -32768],
  ['su SMALLINT UNSIGNED', 65535, 65535],
  ['mi MEDIUMINT', -8388608, -8388608],
  ['mu MEDIUMINT UNSIGNED', 16777215, 16777215],
  ['i INT', -2147483648, -2147483648],
  ['iu INT UNSIGNED', 4294967295, 4294967295],
  ['bi BIGINT', '-9223372036854775808', '-9223372036854775808'],
  ['bu BIGINT UNSIGNED', '18446744073709551615', '18446744073709551615'],
  ['de DECIMAL(65,30)', '-12345678901234567890123456789012345.123456789012345678901234567890',
    '-12345678901234567890123456789012345.123456789012345678901234567890'],
  ['fl FLOAT', 1.5, 1.5],
  ['db DOUBLE', -2.2250738585072014e-308, -2.2250738585072014e-308],
  ['d DATE', '1000-01-01', '1000-01-01'],
  ['dt DATETIME(6)', '2026-11-24 23:59:58.123456', '2026-11-24 23:59:58.123456'],
  ['ts TIMESTAMP(6) NULL', '2038-01-19 03:14:07.999999', '2038-01-19 03:14:07.999999'],
  ['t1 TIME(6)', '-838:59:59', '-838:59:59'],
  ['t2 TIME(6)', '100:00:00.123456', '100:00:00.123456'],
  ['y YEAR', 2155, 2155],
  ['c CHAR(10)', 'fixed', 'fixed'],
  ['vc VARCHAR(100)', 'héllo wörld ✓', 'héllo wörld ✓'],
  ['bl BLOB', ALL_BYTES, ALL_BYTES],
  ['tx TEXT', 'text\0with nul', 'text\0with nul'],
  ['j JSON', '{"a": [1, 2.5, null, "x"]}', { a: [1, 2.5, null, 'x'] }],
  ['b BIT(64)', BITS, BITS],
  ["e ENUM('red','green')", 'green', 'green'],
  ["st SET('a','b','c')", 'a,c', 'a,c'],
];
const names = COLUMNS.map(([definition]) => definition.split(' ')[0]);

let passed = 0;
let failed = 0;
async function check(name, body) {
  try {
    await body();
    passed += 1;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${name}: ${e && e.stack ? e.stack : e}`);
  }
}

/** JSON columns come back as text on MariaDB (an alias of LONGTEXT), as objects on MySQL. */
function jsonValue(value) {
  return typeof value === 'string' ? JSON.parse(value) : value;
}

async function main() {
  const conn = await mysql.createConnection(options);
  await conn.query(
    `CREATE OR REPLACE TABLE mysql2_types (id INT PRIMARY KEY, ${COLUMNS.map(([d]) => d).join(', ')})`);

  await check('every column type round-trips as parameter and result', async () => {
    const placeholders = names.map(() => '?').join(', ');
    await conn.execute(`INSERT INTO mysql2_types (id, ${names.join(', ')}) VALUES (?, ${placeholders})`,
      [1, ...COLUMNS.map(([, bound]) => bound)]);
    const [rows] = await conn.execute('SELECT * FROM mysql2_types WHERE id = ?', [1]);
    assert.equal(rows.length, 1);
    for (const [index, name] of names.entries()) {
      const expected = COLUMNS[index][2];
      const actual = name === 'j' ? jsonValue(rows[0][name]) : rows[0][name];
      assert.deepEqual(actual, expected, `column ${name}`);
    }
  });

  await check('NULL parameters and NULL results', async () => {
    await conn.execute(`INSERT INTO mysql2_types (id, ${names.join(', ')}) VALUES (?, ${names.map(() => '?').join(', ')})`,
      [2, ...names.map(() => null)]);
    const [rows] = await conn.execute('SELECT * FROM mysql2_types WHERE id = ?', [2]);
    for (const name of names) {
      assert.equal(rows[0][name], null, `column ${name}`);
    }
    const [[row]] = await conn.execute('SELECT ? IS NULL AS n, COALESCE(?, ?) AS c', [null, null, 'x']);
    assert.deepEqual([row.n, row.c], [1, 'x']);
  });

  await check('a closed statement can be prepared and executed again', async () => {
    const sql = 'SELECT ? * 2 AS doubled';
    const [[first]] = await conn.execute(sql, [21]);
    assert.equal(Number(first.doubled), 42);
    conn.unprepare(sql);
    const [[again]] = await conn.execute(sql, [5]);
    assert.equal(Number(again.doubled), 10);
  });

  await check('a failing statement reports the server error and the session goes on', async () => {
    await assert.rejects(conn.execute('SELECT * FROM mysql2_no_such_table WHERE id = ?', [1]),
      (e) => e.errno === 1146);
    await assert.rejects(conn.execute('SELECT ? +', [1]), (e) => e.errno === 1064);
    const [[row]] = await conn.execute('SELECT ? AS still', ['here']);
    assert.equal(row.still, 'here');
  });

  await check(`${CONNECTIONS} connections each run 20 rounds of 3 statements`, async () => {
    await conn.query('CREATE OR REPLACE TABLE mysql2_rows (client INT, n INT, label VARCHAR(40))');
    const clients = [...Array(CONNECTIONS).keys()].map(async (client) => {
      const c = await mysql.createConnection(options);
      try {
        for (let n = 0; n < 20; n += 1) {
          await c.execute('INSERT INTO mysql2_rows VALUES (?, ?, ?)', [client, n, `c${client}-${n}`]);
          const [[sum]] = await c.execute(
            'SELECT COUNT(*) AS count, SUM(n) AS total FROM mysql2_rows WHERE client = ?', [client]);
          assert.deepEqual([Number(sum.count), Number(sum.total)], [n + 1, (n * (n + 1)) / 2]);
          const [[echo]] = await c.execute('SELECT CONCAT(?, ?) AS label, CAST(? AS SIGNED) AS big',
            [`c${client}`, `-${n}`, '9007199254740993']);
          assert.deepEqual([echo.label, String(echo.big)], [`c${client}-${n}`, '9007199254740993']);
        }
      } finally {
        await c.end();
      }
    });
    await Promise.all(clients);
  });

  await conn.query('DROP TABLE mysql2_types, mysql2_rows');
  await conn.end();
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}

main().catch((e) => {
  console.log(`FAIL setup: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
