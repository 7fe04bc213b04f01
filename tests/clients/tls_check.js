// mysql2 over TLS (and with caching_sha2_password when the server proposes it): a query,
// several result sets from one multi-statement query, a server-side prepared statement,
// COM_CHANGE_USER back to the same user, and the transport as the socket reports it. Used by
// crates/sluice/tests/tls_clients.rs.
//
//   node tls_check.js PORT USER PASSWORD DATABASE [CA_FILE]
//
// Without CA_FILE the connection is plain. With MYSQL2_COMPRESS=1 in the environment it asks
// for the compressed protocol (also used by crates/sluice/tests/compression.rs and
// backend_compression.rs). Prints one line per check and "N passed, M failed"; exits 1 when
// any check failed.
'use strict';

const fs = require('node:fs');
const mysql = require('mysql2/promise');
const assert = require('node:assert/strict');

const [port, user, password, database, caFile] = process.argv.slice(2);
const options = { host: '127.0.0.1', port: Number(port), user, password, database };
options.multipleStatements = true; // for the several result sets
if (caFile) {
  options.ssl = { ca: fs.readFileSync(caFile), rejectUnauthorized: true };
}
if (process.env.MYSQL2_COMPRESS === '1') {
  options.compress = true;
}

async function main() {
  let passed = 0;
  let failed = 0;
  const conn = await mysql.createConnection(options);
  const check = async (name, fn) => {
    try {
      await fn();
      passed += 1;
      console.log(`ok ${name}`);
    } catch (e) {
      failed += 1;
      console.log(`FAIL ${name}: ${e.stack || e}`);
    }
  };
  await check('transport', async () => {
    assert.equal(Boolean(conn.connection.stream.encrypted), Boolean(caFile));
  });
  await check('query', async () => {
    const [rows] = await conn.query('SELECT 40 + 2 AS n');
    assert.equal(rows[0].n, 42);
  });
  await check('large result', async () => {
    const [rows] = await conn.query("SELECT REPEAT('ab', 600000) AS s, MD5(REPEAT('ab', 600000)) AS m");
    const md5 = require('node:crypto').createHash('md5').update(rows[0].s).digest('hex');
    assert.equal(rows[0].s.length, 1200000);
    assert.equal(md5, rows[0].m);
  });
  await check('several result sets', async () => {
    // The second result spans several compressed packets; the third is an OK of its own.
    // With compression, mysql2 prints "got packets out of order" warnings here against
    // MariaDB itself as well (the server numbers each result on from its compressed
    // packet); the same twelve lines come through sluice, and the results are right.
    const [results] = await conn.query(
      "SELECT 1 AS a; SELECT REPEAT('xy', 40000) AS b, 2 AS c; DO 1; SELECT 3 AS d",
    );
    assert.equal(results.length, 4);
    assert.equal(results[0][0].a, 1);
    assert.equal(results[1][0].b.length, 80000);
    assert.equal(results[1][0].c, 2);
    assert.equal(results[2].affectedRows, 0);
    assert.equal(results[3][0].d, 3);
    const [[after]] = await conn.query('SELECT 4 AS e');
    assert.equal(after.e, 4);
  });
  await check('prepared statement', async () => {
    const [rows] = await conn.execute('SELECT ? * 2 AS n, CONCAT(?, ?) AS s', [21, 'a', 'b']);
    assert.equal(Number(rows[0].n), 42);
    assert.equal(rows[0].s, 'ab');
  });
  await check('change user', async () => {
    await conn.changeUser({ user, password, database });
    const [rows] = await conn.query('SELECT DATABASE() AS db');
    assert.equal(rows[0].db, database);
  });
  await conn.end();
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed === 0 ? 0 : 1;
}

main().catch((e) => {
  console.log(`FAIL connect: ${e.stack || e}`);
  console.log('0 passed, 1 failed');
  process.exitCode = 1;
});
