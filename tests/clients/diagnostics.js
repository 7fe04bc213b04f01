// Diagnostics scenarios (diagnostics.json) with mysql2: prints every result, one line per
// step, so that a run through sluice can be compared with one directly against MariaDB.
// Steps marked binary run as server-side prepared statements (`execute`).
//
//   node diagnostics.js PORT USER PASSWORD DATABASE
'use strict';

const mysql = require('mysql2/promise');
const spec = require('./diagnostics.json');

const [port, user, password, database] = process.argv.slice(2);

const connect = () =>
  mysql.createConnection({
    host: '127.0.0.1',
    port: Number(port),
    user,
    password,
    database,
    multipleStatements: true,
  });

const show = (value) => (value === null ? 'NULL' : String(value));

function rowsOf(result) {
  if (!Array.isArray(result)) return '';
  return result.map((row) => '(' + Object.values(row).map(show).join(', ') + ')').join(' ');
}

async function run(conn, sql, binary) {
  try {
    const [result] = binary ? await conn.execute(sql) : await conn.query(sql);
    // A multi-statement gives one entry per result.
    const multi = Array.isArray(result) && result.length > 0 && Array.isArray(result[0]);
    return multi ? result.map(rowsOf).join(' ;; ') : rowsOf(result);
  } catch (e) {
    if (!e.errno) throw e;
    return `error ${e.errno}: ${e.sqlMessage}`;
  }
}

async function main() {
  const setup = await connect();
  for (const sql of spec.setup) await run(setup, sql, false);
  await setup.end();
  for (const scenario of spec.scenarios) {
    const clients = { a: await connect(), b: await connect() };
    for (const [index, [who, sql, mode]] of scenario.steps.entries()) {
      const out = await run(clients[who], sql, mode === 'binary');
      console.log(`${scenario.name} #${index} ${who}: ${out}`);
    }
    for (const conn of Object.values(clients)) await conn.end().catch(() => {});
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
