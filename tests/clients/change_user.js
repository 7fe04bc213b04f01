// COM_CHANGE_USER with mysql2 (`connection.changeUser`): logs in as one user, changes the
// session (a variable, the schema, a user variable), changes to another user, and prints
// what the session then is, as one JSON line. Run against MariaDB directly and through
// sluice; the outputs must be equal.
//
//   node change_user.js PORT USER1 PASSWORD1 USER2 PASSWORD2 DATABASE2
'use strict';

const mysql = require('mysql2/promise');

const [port, user1, password1, user2, password2, database2] = process.argv.slice(2);

async function main() {
  const conn = await mysql.createConnection({
    host: '127.0.0.1',
    port: Number(port),
    user: user1,
    password: password1,
  });
  const observe = async () => {
    const [rows] = await conn.query(
      "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1) AS user, DATABASE() AS db, " +
        '@@session.sql_mode = @@global.sql_mode AS default_sql_mode, @@session.sql_mode AS mode, @marker AS marker'
    );
    return rows[0];
  };
  await conn.query("SET SESSION sql_mode = 'ANSI_QUOTES', @marker = 'old session'");
  const before = await observe();
  await conn.changeUser({ user: user2, password: password2, database: database2 });
  const after = await observe();
  let wrong;
  try {
    await conn.changeUser({ user: user1, password: 'not-the-password' });
    wrong = 'accepted';
  } catch (e) {
    wrong = e.errno;
  }
  await conn.end().catch(() => {});
  console.log(JSON.stringify({ before, after, wrong }));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
