// MariaDB's extended metadata with MariaDB Connector/Node (npm `mariadb`), which returns JSON
// columns as objects when the server marks them `json` (MARIADB_CLIENT_EXTENDED_METADATA) and
// as strings otherwise. Prints each row's values with their JavaScript types, as one JSON
// line per query, text and binary protocol. Run against MariaDB directly and through sluice;
// the outputs must be equal.
//
//   node extended_metadata.js PORT USER PASSWORD DATABASE
'use strict';

const mariadb = require('mariadb');

const [port, user, password, database] = process.argv.slice(2);

const describe = (row) =>
  Object.fromEntries(
    Object.entries(row).map(([name, value]) => [
      name,
      {
        type: value === null ? 'null' : Buffer.isBuffer(value) ? 'buffer' : typeof value,
        value: Buffer.isBuffer(value) ? value.toString('hex') : value,
      },
    ])
  );

async function main() {
  const conn = await mariadb.createConnection({
    host: '127.0.0.1',
    port: Number(port),
    user,
    password,
    database,
  });
  await conn.query(
    'CREATE OR REPLACE TABLE xm_t (id INT PRIMARY KEY, j JSON, g POINT, l LINESTRING, u UUID, i INET6)'
  );
  await conn.query(
    "INSERT INTO xm_t VALUES (1, '{\"test\": true}', POINT(1, 2), LINESTRING(POINT(0, 0), POINT(1, 1)), " +
      "'123e4567-e89b-12d3-a456-426655440000', '::1'), (2, '\"😂\"', NULL, NULL, NULL, NULL)"
  );
  const select = 'SELECT id, j, ST_AsText(g) AS g, l IS NOT NULL AS has_l, u, i FROM xm_t ORDER BY id';
  const text = await conn.query(select);
  const binary = await conn.execute(select);
  const meta = text.meta.map((column) => ({
    name: column.name(),
    type: column.type,
    dataTypeName: column.dataTypeName,
    dataTypeFormat: column.dataTypeFormat,
  }));
  console.log(JSON.stringify({ text: text.map(describe), binary: binary.map(describe), meta }));
  await conn.end();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
