// Prepares, executes and closes COUNT distinct statements with mysql2, one after another,
// and prints each answer (or the error), one line each: with a low max_prepared_stmt_count
// the server must never refuse a client that holds a single statement at a time.
//
//   node prepare_loop.js PORT USER PASSWORD DATABASE COUNT
'use strict';

const mysql = require('mysql2/promise');

const [port, user, password, database, count] = process.argv.slice(2);

async function main() {
  const conn = await mysql.createConnection({
    host: '127.0.0.1',
    port: Number(port),
    user,
    password,
    database,
  });
  for (let i = 0; i < Number(count); i++) {
    try {
      const stmt = await conn.prepare(`SELECT ${i} + ? AS n`);
      const [rows] = await stmt.execute([1]);
      await stmt.close();
      console.log(`${i}: ${rows[0].n}`);
    } catch (e) {
      if (!e.errno) throw e;
      console.log(`${i}: error ${e.errno}`);
    }
  }
  await conn.end();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
