// MariaDB's bulk protocol with MariaDB Connector/Node (npm `mariadb`): `batch()` sends
// COM_STMT_BULK_EXECUTE when the server offers MARIADB_CLIENT_STMT_BULK_OPERATIONS (and,
// with `fullResult`, only when BULK_UNIT_RESULTS is offered too; one execute per row
// otherwise). Inserts a few hundred rows of several types (NULLs, a string over 1 MB) with
// and without `fullResult`, has a batch fail part-way on a duplicate key, lets a second
// connection alternate batches with the first (through sluice with a pool of one, both use
// one database connection), and prints what the driver returned and the rows left, one JSON
// value per line. Run against MariaDB directly and through sluice; the outputs must be equal.
// BULK `off` turns the driver's bulk option off (one execute per row).
//
//   node bulk_batch.js PORT USER PASSWORD DATABASE TABLE [BULK]
'use strict';

const mariadb = require('mariadb');

const [port, user, password, database, table, bulk = 'on'] = process.argv.slice(2);

const BULK_OPERATIONS = 1n << 34n;
const BULK_UNIT_RESULTS = 1n << 37n;

// What the driver returned, comparable as JSON (BigInts as strings).
const plain = (value) =>
  JSON.parse(JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? `${v}n` : v)));

const BIG = 1_200_000;

function row(k) {
  return [
    k,
    k % 7 === 0 ? null : BigInt(k) * 1000000007n,
    k % 5 === 0 ? null : (k * 1.25).toFixed(3),
    k / 8,
    k % 11 === 0 ? null : `row ${k} é€😂 'quoted' \\ back`,
    k === 300 ? 'Ω'.repeat(BIG / 2) : k % 13 === 0 ? null : Buffer.from([k & 255, 0, 255]),
    // A Date makes Connector/Node 3.5.4 start a new bulk packet; most rows bind text.
    k % 100 === 0
      ? new Date(Date.UTC(2020, 0, 1, 0, 0, 0, k))
      : `2020-01-01 00:00:00.${String(k % 1000).padStart(3, '0')}`,
    k % 2 === 0,
    `code-${k}`,
  ];
}

const range = (from, to) => Array.from({ length: to - from }, (_, i) => row(from + i));

async function main() {
  const options = { host: '127.0.0.1', port: Number(port), user, password, database, bulk: bulk !== 'off' };
  const conn = await mariadb.createConnection(options);
  const other = await mariadb.createConnection(options);
  const print = (label, value) => console.log(JSON.stringify({ [label]: plain(value) }));
  print('negotiated', {
    bulk: (conn.info.clientCapabilities & BULK_OPERATIONS) !== 0n,
    unit_results: (conn.info.clientCapabilities & BULK_UNIT_RESULTS) !== 0n,
  });
  await conn.query(
    `CREATE OR REPLACE TABLE ${table} (id INT AUTO_INCREMENT PRIMARY KEY, i INT, big BIGINT,
       dec_col DECIMAL(12,3), dbl DOUBLE, s VARCHAR(200), blob_col LONGBLOB, dt DATETIME(3),
       flag TINYINT, code VARCHAR(40) UNIQUE) ENGINE=InnoDB`
  );
  const insert = `INSERT INTO ${table} (i, big, dec_col, dbl, s, blob_col, dt, flag, code)
                  VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`;
  // Several hundred rows, one of them carrying a string over 1 MB, answered by one OK.
  print('aggregated', await conn.batch({ sql: insert, fullResult: false }, range(0, 600)));
  // The driver's default (one result), then `fullResult`: per-row results when the server
  // offers them, else one execute per row.
  print('default', await conn.batch(insert, range(600, 700)));
  print('full_result', await conn.batch({ sql: insert, fullResult: true }, range(700, 760)));
  print('last_insert_id', await conn.query('SELECT LAST_INSERT_ID() AS id'));
  // A duplicate key half-way: the same error, the same rows left.
  const failing = range(800, 900);
  failing[50][8] = 'code-10';
  try {
    await conn.batch({ sql: insert, fullResult: false }, failing);
    print('duplicate', 'no error');
  } catch (err) {
    print('duplicate', { errno: err.errno, sqlState: err.sqlState, text: err.text });
  }
  print('after_duplicate', await conn.query(`SELECT COUNT(*) AS n, MAX(id) AS max FROM ${table}`));
  // Two clients alternating batches of the same statement and of another one, binding
  // different types (numbers, then strings) for the same columns.
  const update = `UPDATE ${table} SET s = ?, i = ? WHERE id = ?`;
  for (let round = 0; round < 6; round++) {
    const base = 1000 + round * 40;
    const mine = range(base, base + 20);
    const theirs = range(base + 20, base + 40).map((r) => [String(r[0]), ...r.slice(1)]);
    print(`round_${round}`, [
      await conn.batch({ sql: insert, fullResult: false }, mine),
      await other.batch({ sql: insert, fullResult: false }, theirs),
      await other.batch({ sql: update, fullResult: false }, [
        [`updated ${round}`, round, 1 + round],
        [null, String(round), 2 + round],
      ]),
      await conn.batch({ sql: update, fullResult: false }, [[`again ${round}`, -round, 3 + round]]),
    ]);
  }
  const rows = await conn.query(
    `SELECT id, i, big, dec_col, dbl, s, LENGTH(blob_col) AS blob_len, MD5(blob_col) AS blob_md5,
            dt, flag, code FROM ${table} ORDER BY id`
  );
  print('row_count', rows.length);
  for (let at = 0; at < rows.length; at += 50) {
    print(`rows_${at}`, rows.slice(at, at + 50));
  }
  await other.end();
  await conn.end();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
