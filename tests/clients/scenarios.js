// Client scenarios (a JSON file such as diagnostics.json or conformance.json) with mysql2:
// prints every result, one line per step, so that a run through sluice can be compared with
// one directly against MariaDB. A step is [who, sql, mode, params]: mode "binary" runs as a
// server-side prepared statement (`execute`), "change_user" sends COM_CHANGE_USER to the
// same user and schema, and "reset" (which mysql2 lacks) prints "unsupported". With
// "metadata" in the spec, each result set starts with its column definitions.
//
//   node scenarios.js PORT USER PASSWORD DATABASE [SPEC]
'use strict';

const mysql = require('mysql2/promise');

const [port, user, password, database, specFile] = process.argv.slice(2);
const spec = require('./' + (specFile || 'diagnostics.json'));

const connect = () =>
  mysql.createConnection({
    host: '127.0.0.1',
    port: Number(port),
    user,
    password,
    database,
    multipleStatements: true,
  });

const show = (value) => {
  if (value === null) return 'NULL';
  if (Buffer.isBuffer(value)) return value.toString();
  if (typeof value === 'object' && !(value instanceof Date)) return JSON.stringify(value);
  return String(value);
};

const columns = (fields) =>
  '[' +
  fields
    .map((f) => `${f.name}:${f.columnType}/${f.characterSet}/${f.columnLength}/${f.decimals}/${f.flags}`)
    .join(' ') +
  '] ';

function rowsOf(result, fields) {
  if (!Array.isArray(result)) return '';
  const head = spec.metadata && Array.isArray(fields) ? columns(fields) : '';
  return head + result.map((row) => '(' + Object.values(row).map(show).join(', ') + ')').join(' ');
}

async function run(conn, sql, binary, params) {
  try {
    const [result, fields] = binary ? await conn.execute(sql, params) : await conn.query(sql, params);
    // A multi-statement (or a CALL) gives one entry per result: rows, or an OK's header.
    const multi =
      Array.isArray(result) &&
      result.length > 0 &&
      result.every((r) => Array.isArray(r) || r?.constructor?.name === 'ResultSetHeader');
    return multi ? result.map((r, i) => rowsOf(r, fields?.[i])).join(' ;; ') : rowsOf(result, fields);
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
    for (const [index, [who, sql, mode, params]] of scenario.steps.entries()) {
      let out;
      if (mode === 'change_user') {
        await clients[who].changeUser({ user, password, database });
        out = 'changed user';
      } else if (mode === 'reset') {
        out = 'unsupported';
      } else {
        out = await run(clients[who], sql, mode === 'binary', params);
      }
      console.log(`${scenario.name} #${index} ${who}: ${out}`);
    }
    for (const conn of Object.values(clients)) await conn.end().catch(() => {});
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
