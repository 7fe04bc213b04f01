//! Result metadata through sluice is what MariaDB would send: MariaDB's extended metadata
//! (`MARIADB_CLIENT_EXTENDED_METADATA`: `json`, `point`, `uuid` ... in column definitions) is
//! negotiated with clients that ask for it and kept from those that do not, whose
//! connections and cached prepare answers are separate.

mod common;

use common::*;

/// Runs `program args...` (see [`run_client`]) and returns its standard output, failing on
/// a non-zero exit.
async fn output(program: &str, args: &[String], stdin: Option<&str>) -> String {
    let out = run_client(program, args, stdin).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_connector_node_gets_json_as_objects_as_directly() {
    let gw = start("xm_node").await;
    let outputs = scenarios::outputs_both_ways(&gw, "node", "extended_metadata.js", &[]).await;
    assert_eq!(outputs[1], outputs[0], "through sluice as directly");
    let seen: serde_json::Value = serde_json::from_str(outputs[1].trim()).unwrap();
    for protocol in ["text", "binary"] {
        let rows = &seen[protocol];
        assert_eq!(
            rows[0]["j"]["value"],
            serde_json::json!({"test": true}),
            "{seen}"
        );
        assert_eq!(
            rows[1]["j"]["value"], "😂",
            "a JSON string loses its quotes: {seen}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cli_column_type_info_matches_directly() {
    let gw = start("xm_cli").await;
    let script = "CREATE OR REPLACE TABLE xm_cli_t (id INT PRIMARY KEY, j JSON, g POINT, \
                  d DECIMAL(10,3), s VARCHAR(20) CHARACTER SET latin1, e ENUM('a','b'), \
                  t TIMESTAMP(3) NULL, u UUID);\n\
                  INSERT INTO xm_cli_t VALUES (1, '[1]', POINT(1,2), 1.5, 'x', 'a', \
                  '2020-01-01 00:00:00.123', UUID());\n\
                  SELECT id, j, g, d, s, e, t FROM xm_cli_t;\n\
                  SELECT LAST_VALUE(1, 2) AS lv;\n\
                  DELIMITER //\n\
                  CREATE OR REPLACE PROCEDURE xm_cli_p(IN n INT, OUT o DECIMAL(6,2)) \
                  BEGIN SELECT n AS first, j FROM xm_cli_t; SELECT g, e FROM xm_cli_t; \
                  SET o = n / 4; END//\n\
                  DELIMITER ;\n\
                  CALL xm_cli_p(3, @o); SELECT @o, CAST(@o AS DECIMAL(6,2)) AS o;\n\
                  SELECT 1 AS a; SELECT j, 'x' AS b FROM xm_cli_t; DO 1;\n";
    let mut outputs = Vec::new();
    for (port, user, password) in gw.both_ways() {
        let args = [
            "--protocol=tcp".to_owned(),
            "-h127.0.0.1".to_owned(),
            format!("-P{port}"),
            format!("-u{user}"),
            format!("-p{password}"),
            "--skip-ssl".to_owned(),
            "--column-type-info".to_owned(),
            "--table".to_owned(),
            TEST_DB.to_owned(),
        ];
        outputs.push(output("mariadb", &args, Some(script)).await);
    }
    assert_eq!(outputs[1], outputs[0], "through sluice as directly");
    for expected in ["BLOB (format=json)", "GEOMETRY (type=point)"] {
        assert!(outputs[1].contains(expected), "{expected}:\n{}", outputs[1]);
    }
}

/// Clients with and without extended metadata prepare the same statement as the same user,
/// so one could be answered from the other's cached prepare: each must get the very bytes
/// MariaDB sends a client like it, in prepare answers and in result sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_and_without_extended_metadata_get_their_own_definitions() {
    use sluice::backend::{BackendConn, Flavor};
    use sluice_protocol::MariadbCapabilities;
    let gw = start_with("xm_mixed", |c| c.pool.max_db_connections = 2).await;
    let mut admin = direct().await;
    mysql_async::prelude::Queryable::query_drop(
        &mut admin,
        "CREATE OR REPLACE TABLE xm_mixed_t (id INT PRIMARY KEY, j JSON, g POINT)",
    )
    .await
    .unwrap();
    admin.disconnect().await.unwrap();
    let sql = b"SELECT id, j, g FROM xm_mixed_t WHERE id > ?";
    let extended = Flavor {
        mariadb: MariadbCapabilities::MARIADB_CLIENT_EXTENDED_METADATA,
        ..Flavor::INTERNAL
    };
    let mut seen = Vec::new();
    // Twice each, alternating: the second of a kind may come from the cache.
    for flavor in [Flavor::INTERNAL, extended, Flavor::INTERNAL, extended] {
        let mut direct =
            BackendConn::connect(&direct_target(), flavor, std::time::Duration::from_secs(5))
                .await
                .unwrap();
        let mut through = raw_client_with(&gw, flavor).await;
        let want = direct.prepare(sql).await.unwrap().unwrap();
        let got = through.prepare(sql).await.unwrap().unwrap();
        assert_eq!(got.column_defs, want.column_defs, "{flavor:?}");
        assert_eq!(got.param_defs, want.param_defs, "{flavor:?}");
        let text = "SELECT id, j, g FROM xm_mixed_t";
        let want_rows = request(&mut direct, &[&[3u8][..], text.as_bytes()].concat()).await;
        let got_rows = request(&mut through, &[&[3u8][..], text.as_bytes()].concat()).await;
        assert_eq!(got_rows, want_rows, "column count");
        let want_def = direct.stream.read_packet().await.unwrap().payload;
        let got_def = through.stream.read_packet().await.unwrap().payload;
        assert_eq!(got_def, want_def, "first column definition of a result set");
        seen.push(got.column_defs[1].clone());
        drop((direct, through));
    }
    assert_ne!(
        seen[0], seen[1],
        "JSON is described differently with extended metadata"
    );
    assert!(
        seen[1].windows(4).any(|w| w == b"json"),
        "{:?}",
        String::from_utf8_lossy(&seen[1])
    );
}
