//! The Data API over real HTTP against the real MariaDB: every endpoint, every value type,
//! errors, limits, transactions and their expiry, TLS, streamed results, and hostile or slow
//! clients against the connection and request caps and timeouts. Every response any test receives is
//! checked against the schema the OpenAPI document gives for its path and status.

mod common;

use std::time::Duration;

use common::data_api::*;
use common::*;
use mysql_async::prelude::*;
use serde_json::{json, Value};
use sluice::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Client {
    gw: TestGateway,
    base: String,
    http: reqwest::Client,
    openapi: Value,
}

impl Client {
    async fn start(test: &str, tweak: impl FnOnce(&mut Config)) -> Client {
        let gw = start_with(test, |c| {
            data_api(c);
            tweak(c);
        })
        .await;
        let base = format!("http://{}", gw.http.expect("Data API listening"));
        Client::over(gw, base, plain_client()).await
    }

    async fn over(gw: TestGateway, base: String, http: reqwest::Client) -> Client {
        // Not kept alive: tests count the connections the server holds.
        let openapi = http
            .get(format!("{base}/v1/openapi.json"))
            .header("connection", "close")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Client {
            gw,
            base,
            http,
            openapi,
        }
    }

    /// POSTs `body` (raw text) to `path` with `key`; returns the status and the envelope,
    /// after checking the envelope against the OpenAPI schema for that path and status.
    async fn raw(&self, key: Option<&str>, path: &str, body: String) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.base)).body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        self.check_schema(path, status, &body);
        (status, body)
    }

    async fn post(&self, key: Option<&str>, path: &str, body: Value) -> (u16, Value) {
        self.raw(key, path, body.to_string()).await
    }

    /// `POST /v1/execute` as `app` in the test database; returns `data` or panics.
    async fn sql(&self, sql: &str, params: Value) -> Value {
        let (status, body) = self
            .post(
                Some(APP_KEY),
                "/v1/execute",
                json!({"sql": sql, "params": params, "database": TEST_DB}),
            )
            .await;
        assert_eq!(status, 200, "{sql}: {body}");
        body["data"].clone()
    }

    fn check_schema(&self, path: &str, status: u16, body: &Value) {
        let errors = self.schema_errors(path, status, body);
        assert!(
            errors.is_empty(),
            "POST {path} {status} does not match its OpenAPI schema: {errors:?}\n{body}"
        );
    }

    /// Why `body` does not match the documented schema of `path` at `status`.
    fn schema_errors(&self, path: &str, status: u16, body: &Value) -> Vec<String> {
        let template = match path.strip_prefix("/v1/transactions/") {
            Some(rest) => format!(
                "/v1/transactions/{{id}}/{}",
                rest.rsplit('/').next().unwrap()
            ),
            None => path.to_owned(),
        };
        let response = &self.openapi["paths"][&template]["post"]["responses"][status.to_string()];
        let schema = &response["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "OpenAPI documents no {status} response for POST {template}; got {body}"
        );
        let mut root = self.openapi.clone();
        root["$ref"] = schema["$ref"].clone();
        let validator = jsonschema::validator_for(&root).expect("OpenAPI schemas compile");
        validator.iter_errors(body).map(|e| e.to_string()).collect()
    }

    /// Starts a transaction as `app` with `options`; returns its id.
    async fn begin(&self, options: Value) -> String {
        let (status, body) = self.post(Some(APP_KEY), "/v1/transactions", options).await;
        assert_eq!(status, 200, "{body}");
        body["data"]["transaction_id"].as_str().unwrap().to_owned()
    }

    /// Runs `sql` inside transaction `id` with `key`.
    async fn in_tx(&self, key: &str, id: &str, sql: &str) -> (u16, Value) {
        let body = json!({"sql": sql, "transaction_id": id});
        self.post(Some(key), "/v1/execute", body).await
    }

    /// Ends transaction `id` with `how` (`commit` or `rollback`); returns the HTTP status.
    async fn end(&self, key: &str, id: &str, how: &str) -> u16 {
        let path = format!("/v1/transactions/{id}/{how}");
        self.post(Some(key), &path, json!({})).await.0
    }

    async fn metrics(&self) -> String {
        self.gw.metrics().await
    }
}

#[tokio::test]
async fn every_value_type_round_trips() {
    let api = Client::start("http_types", |_| {}).await;
    api.sql(
        "CREATE OR REPLACE TABLE http_types (id INT PRIMARY KEY,
           ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, mi MEDIUMINT, i INT, iu INT UNSIGNED,
           bi BIGINT, bu BIGINT UNSIGNED, de DECIMAL(20,6), fl FLOAT, db DOUBLE,
           d DATE, dt DATETIME(6), ts TIMESTAMP(3) NULL, t TIME(6), y YEAR,
           c CHAR(3), vc VARCHAR(20), tx TEXT, bl BLOB, vb VARBINARY(8), j JSON,
           b BIT(12), b64 BIT(64), e ENUM('a','b'), s SET('x','y'), n INT NULL)",
        json!([]),
    )
    .await;
    let document = json!({"k": [1, 2.5, {"x": null, "s": "é"}]});
    let inserted = api
        .sql(
            "INSERT INTO http_types VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            json!([
                1, -128, 255, -32768, 8388607, -2147483648i64, 4294967295u64,
                {"type": "integer", "value": "-9223372036854775808"},
                {"type": "integer", "value": "18446744073709551615"},
                {"type": "decimal", "value": "-12345678901234.123456"},
                1.5, 0.1,
                {"type": "date", "value": "2024-02-29"},
                {"type": "datetime", "value": "2024-02-29T23:59:58.123456"},
                {"type": "timestamp", "value": "2030-06-01T12:00:00.25"},
                {"type": "time", "value": "-838:59:59.000001"},
                2024, "abc", "héllo ✓", "text",
                {"type": "blob", "value": "AAEC/w=="},
                {"type": "blob", "value": "3q0="},
                {"type": "json", "value": document},
                2730,
                {"type": "integer", "value": "18446744073709551615"},
                "b", "x,y", null
            ]),
        )
        .await;
    assert_eq!(inserted["rows_affected"], 1);
    api.sql(
        "INSERT INTO http_types (id, t) VALUES (2, ?)",
        json!([{"type": "time", "value": "100:00:00.5"}]),
    )
    .await;
    let data = api
        .sql("SELECT * FROM http_types WHERE id = ?", json!([1]))
        .await;
    let row = &data["rows"][0];
    let expected = json!([
        1,
        -128,
        255,
        -32768,
        8388607,
        -2147483648i64,
        4294967295u64,
        "-9223372036854775808",
        "18446744073709551615",
        "-12345678901234.123456",
        1.5,
        0.1,
        "2024-02-29",
        "2024-02-29T23:59:58.123456",
        "2030-06-01T12:00:00.250",
        "-838:59:59.000001",
        2024,
        "abc",
        "héllo ✓",
        "text",
        "AAEC/w==",
        "3q0=",
        row[22].clone(),
        2730,
        "18446744073709551615",
        "b",
        "x,y",
        null
    ]);
    assert_eq!(row, &expected);
    // MariaDB's JSON is LONGTEXT on the wire: the document comes back as its text.
    let json_value = match &row[22] {
        Value::String(text) => serde_json::from_str::<Value>(text).unwrap(),
        embedded => embedded.clone(),
    };
    assert_eq!(json_value, document);
    let types: Vec<&str> = data["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "INT",
            "TINYINT",
            "TINYINT",
            "SMALLINT",
            "MEDIUMINT",
            "INT",
            "INT",
            "BIGINT",
            "BIGINT",
            "DECIMAL",
            "FLOAT",
            "DOUBLE",
            "DATE",
            "DATETIME",
            "TIMESTAMP",
            "TIME",
            "YEAR",
            "CHAR",
            "VARCHAR",
            "TEXT",
            "BLOB",
            "VARBINARY",
            "TEXT",
            "BIT",
            "BIT",
            "ENUM",
            "SET",
            "INT"
        ]
    );
    assert_eq!(data["columns"][0]["nullable"], false);
    assert_eq!(data["columns"][27]["nullable"], true);

    // The second row: a TIME over 24 hours, NULL everywhere else; rows as objects.
    let (status, body) = api
        .post(
            Some(APP_KEY),
            "/v1/execute",
            json!({"sql": "SELECT id, t, bu, j FROM http_types WHERE id = 2",
                   "database": TEST_DB, "rows_as": "objects", "include_metadata": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"]["rows"],
        json!([{"id": 2, "t": "100:00:00.500000", "bu": null, "j": null}])
    );
    let bu = &body["data"]["columns"][2];
    assert_eq!(
        (&bu["table"], &bu["unsigned"], &bu["schema"]),
        (&json!("http_types"), &json!(true), &json!(TEST_DB))
    );

    // Integers at the edge of exact JSON numbers, and a bound NULL.
    let data = api
        .sql(
            "SELECT 9007199254740991, -9007199254740991, 9007199254740992, ? IS NULL",
            json!([null]),
        )
        .await;
    assert_eq!(
        data["rows"][0],
        json!([
            9007199254740991i64,
            -9007199254740991i64,
            "9007199254740992",
            1
        ])
    );
}

#[tokio::test]
async fn parameters_are_bound_never_interpolated() {
    let api = Client::start("http_bind", |_| {}).await;
    api.sql(
        "CREATE OR REPLACE TABLE http_bind (v VARCHAR(100))",
        json!([]),
    )
    .await;
    let hostile = "x'); DROP TABLE http_bind; --";
    api.sql("INSERT INTO http_bind VALUES (?)", json!([hostile]))
        .await;
    let data = api.sql("SELECT v FROM http_bind", json!([])).await;
    assert_eq!(data["rows"], json!([[hostile]]));
}

#[tokio::test]
async fn errors_come_in_the_envelope() {
    let api = Client::start("http_errors", |_| {}).await;
    let exec = |body: Value| api.post(Some(APP_KEY), "/v1/execute", body);

    let (status, body) = api
        .raw(Some(APP_KEY), "/v1/execute", "{not json".into())
        .await;
    assert_eq!((status, body["status"].as_str()), (400, Some("badRequest")));
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("invalid request body"));

    let (status, body) = exec(json!({"sql": "SELECT 1", "databse": TEST_DB})).await;
    assert_eq!(status, 400, "unknown fields are refused: {body}");

    let (status, body) =
        exec(json!({"sql": "SELECT ?, ?", "params": [1], "database": TEST_DB})).await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("2 placeholder(s) but 1 parameter(s)"),
        "{body}"
    );

    let (status, body) =
        exec(json!({"sql": "SELECT ?", "params": [[1]], "database": TEST_DB})).await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("parameter 0:"),
        "{body}"
    );

    let (status, body) =
        exec(json!({"sql": "SELECT * FROM no_such_table", "database": TEST_DB})).await;
    assert_eq!((status, body["status"].as_str()), (422, Some("sqlError")));
    assert_eq!(body["data"], json!({"code": 1146, "sqlstate": "42S02"}));
    assert!(body["message"].as_str().unwrap().contains("no_such_table"));

    let (status, body) = exec(json!({"sql": "SELECT 1", "database": "no_such_db_x"})).await;
    assert_eq!(status, 403, "app may only use {TEST_DB}: {body}");
    let (status, body) = api
        .post(
            Some(OTHER_KEY),
            "/v1/execute",
            json!({"sql": "SELECT 1", "database": "no_such_db_x"}),
        )
        .await;
    assert_eq!(
        (status, &body["data"]["code"]),
        (422, &json!(1049)),
        "{body}"
    );

    let (status, body) = exec(json!({"sql": "SELECT 1"})).await;
    assert_eq!(status, 403, "app must name its database: {body}");
    assert_eq!(body["status"], "unauthorized");

    let (status, body) = api
        .post(None, "/v1/execute", json!({"sql": "SELECT 1"}))
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (401, Some("notAuthenticated"))
    );
    let (status, _) = api
        .post(Some("wrong-key"), "/v1/execute", json!({"sql": "SELECT 1"}))
        .await;
    assert_eq!(status, 401);

    let response = api
        .http
        .get(format!("{}/v1/nothing", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "notFound");

    let metrics = api.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_http_requests_total{endpoint=\"/v1/execute\",status=\"401\"}"
        ),
        2.0
    );
    assert!(
        metrics.contains("sluice_http_request_duration_seconds_bucket{endpoint=\"/v1/execute\"")
    );
    api.gw.wait_idle().await;
}

#[tokio::test]
async fn session_changes_do_not_leak_between_requests() {
    let api = Client::start("http_session", |c| c.pool.max_db_connections = 1).await;
    api.sql("SET @leak = 42, time_zone = '+05:00'", json!([]))
        .await;
    let data = api.sql("SELECT @leak, @@time_zone", json!([])).await;
    assert_eq!(data["rows"], json!([[null, "SYSTEM"]]));
    api.sql("BEGIN", json!([])).await;
    let data = api.sql("SELECT @@in_transaction", json!([])).await;
    assert_eq!(
        data["rows"],
        json!([[0]]),
        "a BEGIN outside a Data API transaction is rolled back"
    );
    let data = api.sql("SELECT CONNECTION_ID()", json!([])).await;
    let again = api.sql("SELECT CONNECTION_ID()", json!([])).await;
    assert_eq!(
        data["rows"], again["rows"],
        "one pooled connection serves both"
    );
    assert_eq!(db_connections_of(&api.gw.backend_user).await, 1);

    // The connection keeps the statement: twenty requests, one prepare on the database.
    let prepared =
        || async { metric_value(&api.metrics().await, "sluice_statements_prepared_total") };
    let before = prepared().await;
    for i in 0..20 {
        let data = api.sql("SELECT ? + 1", json!([i])).await;
        assert_eq!(data["rows"], json!([[i + 1]]));
    }
    assert_eq!(prepared().await - before, 1.0);
}

#[tokio::test]
async fn batches_are_atomic() {
    let api = Client::start("http_batch", |_| {}).await;
    api.sql(
        "CREATE OR REPLACE TABLE http_batch (id INT PRIMARY KEY, v VARCHAR(10)) ENGINE=InnoDB",
        json!([]),
    )
    .await;
    let (status, body) = api
        .post(
            Some(APP_KEY),
            "/v1/batch",
            json!({"database": TEST_DB, "sql": "INSERT INTO http_batch VALUES (?, ?)",
                   "params_sets": [[1, "a"], [2, "b"], [3, null]]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["results"].as_array().unwrap().len(), 3);
    assert_eq!(body["data"]["results"][2]["rows_affected"], 1);

    // A duplicate key at index 2: nothing of the batch stays.
    let (status, body) = api
        .post(
            Some(APP_KEY),
            "/v1/batch",
            json!({"database": TEST_DB, "statements": [
                {"sql": "INSERT INTO http_batch VALUES (10, 'x')"},
                {"sql": "UPDATE http_batch SET v = ? WHERE id = 1", "params": ["changed"]},
                {"sql": "INSERT INTO http_batch VALUES (2, 'dup')"},
                {"sql": "INSERT INTO http_batch VALUES (11, 'y')"}
            ]}),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    assert_eq!(body["data"]["index"], 2);
    assert_eq!(body["data"]["code"], 1062);
    let data = api
        .sql("SELECT id, v FROM http_batch ORDER BY id", json!([]))
        .await;
    assert_eq!(data["rows"], json!([[1, "a"], [2, "b"], [3, null]]));

    let (status, body) = api
        .post(
            Some(APP_KEY),
            "/v1/batch",
            json!({"database": TEST_DB, "sql": "SELECT 1"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api
        .post(
            Some(APP_KEY),
            "/v1/batch",
            json!({"database": TEST_DB, "sql": "SELECT ?", "params_sets": [[1], [{"type": "nope", "value": 1}]]}),
        )
        .await;
    assert_eq!((status, &body["data"]["index"]), (400, &json!(1)), "{body}");

    // Inside a transaction a failing batch rolls back to its savepoint only.
    let id = api.begin(json!({"database": TEST_DB})).await;
    api.in_tx(APP_KEY, &id, "INSERT INTO http_batch VALUES (20, 'kept')")
        .await;
    let (status, body) = api
        .post(
            Some(APP_KEY),
            "/v1/batch",
            json!({"transaction_id": id, "statements": [
                {"sql": "INSERT INTO http_batch VALUES (21, 'undone')"},
                {"sql": "INSERT INTO http_batch VALUES (1, 'dup')"}
            ]}),
        )
        .await;
    assert_eq!((status, &body["data"]["index"]), (409, &json!(1)), "{body}");
    let status = api.end(APP_KEY, &id, "commit").await;
    assert_eq!(status, 200);
    let data = api
        .sql("SELECT id FROM http_batch WHERE id >= 20", json!([]))
        .await;
    assert_eq!(data["rows"], json!([[20]]));
}

/// Rows in `http_tx`, seen from outside any transaction.
async fn count(conn: &mut mysql_async::Conn) -> u64 {
    conn.query_first("SELECT COUNT(*) FROM http_tx")
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn transactions_hold_a_connection_between_requests() {
    let api = Client::start("http_tx", |_| {}).await;
    api.sql(
        "CREATE OR REPLACE TABLE http_tx (id INT PRIMARY KEY) ENGINE=InnoDB",
        json!([]),
    )
    .await;
    let mut direct = direct().await;

    let id = api
        .begin(json!({"database": TEST_DB, "isolation_level": "READ COMMITTED"}))
        .await;
    assert_eq!(id.len(), 32);
    let in_tx = |sql| api.in_tx(APP_KEY, &id, sql);
    let (status, body) = in_tx("INSERT INTO http_tx VALUES (1)").await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = in_tx("SELECT COUNT(*) FROM http_tx").await;
    assert_eq!(
        body["data"]["rows"],
        json!([[1]]),
        "the transaction sees its own row"
    );
    let (_, body) = in_tx(
        "SELECT trx_isolation_level FROM information_schema.INNODB_TRX
         WHERE trx_mysql_thread_id = CONNECTION_ID()",
    )
    .await;
    assert_eq!(body["data"]["rows"], json!([["READ COMMITTED"]]));
    assert_eq!(
        count(&mut direct).await,
        0,
        "uncommitted rows stay invisible"
    );
    let metrics = api.metrics().await;
    assert_eq!(metric_value(&metrics, "sluice_http_open_transactions"), 1.0);

    // Another user cannot see it; an unknown id is unknown.
    let (status, body) = api.in_tx(OTHER_KEY, &id, "SELECT 1").await;
    assert_eq!((status, body["status"].as_str()), (404, Some("notFound")));
    let status = api.end(OTHER_KEY, &id, "rollback").await;
    assert_eq!(status, 404);
    let (status, _) = api
        .post(
            Some(APP_KEY),
            "/v1/execute",
            json!({"sql": "SELECT 1", "transaction_id": "0123456789abcdef0123456789abcdef"}),
        )
        .await;
    assert_eq!(status, 404);

    let (status, body) = api
        .post(
            Some(APP_KEY),
            &format!("/v1/transactions/{id}/commit"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(count(&mut direct).await, 1);
    let status = api.end(APP_KEY, &id, "commit").await;
    assert_eq!(status, 404, "a finished transaction is gone");

    // Rollback discards; a read-only transaction refuses writes.
    let id = api.begin(json!({"database": TEST_DB})).await;
    api.in_tx(APP_KEY, &id, "INSERT INTO http_tx VALUES (2)")
        .await;
    let status = api.end(APP_KEY, &id, "rollback").await;
    assert_eq!(status, 200);
    assert_eq!(count(&mut direct).await, 1);
    let id = api
        .begin(json!({"database": TEST_DB, "read_only": true}))
        .await;
    let (status, body) = api
        .in_tx(APP_KEY, &id, "INSERT INTO http_tx VALUES (3)")
        .await;
    assert_eq!(
        (status, &body["data"]["code"]),
        (422, &json!(1792)),
        "{body}"
    );
    api.end(APP_KEY, &id, "rollback").await;
    let (status, body) = api
        .post(
            Some(APP_KEY),
            "/v1/transactions",
            json!({"database": TEST_DB, "isolation_level": "SOMETIMES"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    api.gw.wait_idle().await;
    let metrics = api.metrics().await;
    assert_eq!(metric_value(&metrics, "sluice_http_open_transactions"), 0.0);
    direct.disconnect().await.unwrap();
}

#[tokio::test]
async fn idle_transactions_are_rolled_back_and_freed() {
    let api = Client::start("http_tx_idle", |c| {
        c.http.transaction_idle_timeout = Duration::from_millis(300);
    })
    .await;
    api.sql(
        "CREATE OR REPLACE TABLE http_tx_idle (id INT) ENGINE=InnoDB",
        json!([]),
    )
    .await;
    let id = api.begin(json!({"database": TEST_DB})).await;
    api.in_tx(APP_KEY, &id, "INSERT INTO http_tx_idle VALUES (1)")
        .await;
    assert_eq!(
        api.gw.gateway.pool.stats().busy,
        1,
        "the transaction holds its connection"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(api.gw.gateway.pool.stats().busy, 0, "the reaper freed it");
    let (status, body) = api.in_tx(APP_KEY, &id, "SELECT 1").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (410, Some("expired")),
        "{body}"
    );
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("transaction_idle_timeout"));
    let data = api
        .sql("SELECT COUNT(*) FROM http_tx_idle", json!([]))
        .await;
    assert_eq!(data["rows"], json!([[0]]), "rolled back");
    let (status, _) = api.in_tx(OTHER_KEY, &id, "SELECT 1").await;
    assert_eq!(status, 404, "another user learns nothing about it");
}

#[tokio::test]
async fn limits_give_clear_errors() {
    let api = Client::start("http_limits", |c| {
        c.http.max_rows = 5;
        c.http.max_body_size = 1024;
        c.http.max_result_size = 4096;
        c.http.statement_timeout = Duration::from_millis(300);
        c.pool.max_db_connections = 1;
    })
    .await;
    let seq = "SELECT seq FROM seq_1_to_10";
    let (status, body) = api
        .post(
            Some(APP_KEY),
            "/v1/execute",
            json!({"sql": seq, "database": TEST_DB}),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (507, Some("resultTooLarge")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains("http.max_rows"));
    let (status, body) = api
        .post(
            Some(APP_KEY),
            "/v1/execute",
            json!({"sql": "SELECT REPEAT('x', 5000)", "database": TEST_DB}),
        )
        .await;
    assert_eq!(status, 507, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("http.max_result_size"));
    let (status, body) = api
        .post(
            Some(APP_KEY),
            "/v1/execute",
            json!({"sql": "SELECT ?", "params": ["y".repeat(2000)], "database": TEST_DB}),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (413, Some("payloadTooLarge")),
        "{body}"
    );
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("http.max_body_size"));
    let (status, body) = api
        .post(
            Some(APP_KEY),
            "/v1/execute",
            json!({"sql": "SELECT SLEEP(5)", "database": TEST_DB}),
        )
        .await;
    assert_eq!(
        (status, &body["data"]["code"]),
        (504, &json!(1969)),
        "{body}"
    );
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("http.statement_timeout"));
    // The one pooled connection survived all of that and serves the next request.
    let data = api.sql("SELECT seq FROM seq_1_to_5", json!([])).await;
    assert_eq!(data["rows"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn openapi_document_describes_every_endpoint() {
    let api = Client::start("http_openapi", |_| {}).await;
    let paths = api.openapi["paths"].as_object().unwrap();
    for path in [
        "/v1/execute",
        "/v1/batch",
        "/v1/transactions",
        "/v1/transactions/{id}/commit",
        "/v1/transactions/{id}/rollback",
        "/v1/openapi.json",
    ] {
        assert!(paths.contains_key(path), "{path} is documented");
    }
    // The check every test applies to every response does catch a mismatch.
    for (status, wrong) in [
        (
            200,
            json!({"status": "success", "message": "", "data": {"rows": []}}),
        ),
        (
            200,
            json!({"status": "success", "message": "", "data": {"columns": [], "rows": [],
            "rows_affected": -1, "last_insert_id": 0, "warnings": 0}}),
        ),
        (
            422,
            json!({"status": "sqlError", "message": "m", "data": {"code": "1146"}}),
        ),
        (422, json!({"status": "oops", "message": "m", "data": null})),
    ] {
        assert!(
            !api.schema_errors("/v1/execute", status, &wrong).is_empty(),
            "{wrong} should not match"
        );
    }
    let (status, body) = api
        .post(
            Some(APP_KEY),
            "/v1/execute",
            json!({"sql": "SELECT 1 AS one", "database": TEST_DB, "rows_as": "objects"}),
        )
        .await;
    assert_eq!((status, &body["data"]["rows"]), (200, &json!([{"one": 1}])));
}

#[tokio::test]
async fn serves_https_with_the_configured_certificate() {
    // The certificate of the MySQL port, shared (`http.tls = "shared"`).
    let certs = common::certs::make();
    let gw = start_with("http_tls", |c| {
        data_api(c);
        common::certs::with_tls(c, &certs, sluice::tls::TlsMode::Allow);
        c.http.tls = Some(sluice::config::SharedTls::Shared);
        c.http.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let port = gw.http.unwrap().port();
    // A socket that never starts its handshake is closed after header_read_timeout.
    let mut silent = tokio::net::TcpStream::connect(gw.http.unwrap())
        .await
        .unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut got));
    assert!(closed.await.is_ok(), "a silent TLS socket is closed");
    assert!(got.is_empty());
    let pem = std::fs::read(&certs.ca).unwrap();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls_client_trusting(&pem))
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    let api = Client::over(gw, format!("https://localhost:{port}"), client).await;
    let (status, body) = api
        .post(
            Some(APP_KEY),
            "/v1/execute",
            json!({"sql": "SELECT 'secure'", "database": TEST_DB}),
        )
        .await;
    assert_eq!((status, &body["data"]["rows"]), (200, &json!([["secure"]])));
    let plain = plain_client()
        .post(format!("http://127.0.0.1:{port}/v1/execute"))
        .body("{}")
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP is not served on the TLS listener"
    );
    let metrics = api.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_http_rejections_total{reason=\"header_read_timeout\"}"
        ),
        1.0
    );
}

fn tls_client_trusting(pem: &[u8]) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

#[tokio::test]
async fn database_trouble_is_503_or_502_never_a_panic() {
    // Nothing listens on the backend port: 503 within the borrow timeout.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let api = Client::start("http_db_down", |c| {
        c.backend.url = format!("mysql://nobody@127.0.0.1:{port}");
        c.pool.borrow_timeout = Duration::from_millis(300);
    })
    .await;
    let (status, body) = api
        .post(
            Some(APP_KEY),
            "/v1/execute",
            json!({"sql": "SELECT 1", "database": TEST_DB}),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("cannot reach the database"), "{body}");
    assert!(
        !message.contains("127.0.0.1"),
        "no address for callers: {body}"
    );

    // The connection under a transaction is killed: 502, and the transaction is gone.
    let api = Client::start("http_db_killed", |_| {}).await;
    let id = api.begin(json!({"database": TEST_DB})).await;
    let (_, body) = api.in_tx(APP_KEY, &id, "SELECT CONNECTION_ID()").await;
    let thread = body["data"]["rows"][0][0].as_u64().unwrap();
    let mut direct = direct().await;
    direct.query_drop(format!("KILL {thread}")).await.unwrap();
    let (status, body) = api.in_tx(APP_KEY, &id, "SELECT 1").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (502, Some("badGateway")),
        "{body}"
    );
    let status = api.end(APP_KEY, &id, "rollback").await;
    assert_eq!(status, 404);
    // The gateway carries on with a fresh connection.
    let data = api.sql("SELECT 2", json!([])).await;
    assert_eq!(data["rows"], json!([[2]]));
    direct.disconnect().await.unwrap();
}

/// Rows of about 180 bytes with characters JSON must escape, and a DECIMAL.
const WIDE_ROWS: &str =
    r#"SELECT seq, REPEAT(CONCAT('é"\\', seq), 20) AS filler, seq / 7 AS ratio FROM seq_1_to_"#;

#[tokio::test]
async fn large_results_stream_as_the_same_document() {
    let api = Client::start("http_stream", |_| {}).await;
    let run = |sql: String| {
        api.http
            .post(format!("{}/v1/execute", api.base))
            .bearer_auth(APP_KEY)
            .json(&json!({"sql": sql, "database": TEST_DB}))
            .send()
    };
    // One row is answered whole, with a length.
    let small = run(format!("{WIDE_ROWS}1")).await.unwrap();
    assert!(small.headers().contains_key("content-length"));
    assert_eq!(small.headers()["content-type"], "application/json");
    let small: Value = small.json().await.unwrap();
    // 20,000 rows (about 4 MB) are streamed, and are the document a buffered reply was:
    // serde_json's rendering of the same value, byte for byte.
    let sql = format!("{WIDE_ROWS}20000");
    let response = run(sql.clone()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(!response.headers().contains_key("content-length"));
    let text = response.text().await.unwrap();
    let rows: Vec<(u64, String, String)> = direct().await.query(&sql).await.unwrap();
    let expected = json!({
        "status": "success",
        "message": "statement executed",
        "data": {
            "columns": small["data"]["columns"],
            "rows": rows.iter().map(|(seq, filler, ratio)| json!([seq, filler, ratio])).collect::<Vec<_>>(),
            "rows_affected": 0,
            "last_insert_id": 0,
            "warnings": 0,
        }
    });
    assert!(text.len() > 3_000_000, "{} bytes", text.len());
    assert!(
        text == serde_json::to_string(&expected).unwrap(),
        "the streamed document differs from the buffered one"
    );
    api.check_schema("/v1/execute", 200, &serde_json::from_str(&text).unwrap());

    // A CALL's later results follow the first under `more_results`, streamed or not.
    api.sql(
        &format!(
            "CREATE OR REPLACE PROCEDURE http_stream_two() BEGIN SELECT 'first' AS a; {WIDE_ROWS}2000; END"
        ),
        json!([]),
    )
    .await;
    let data = api.sql("CALL http_stream_two()", json!([])).await;
    assert_eq!(data["rows"], json!([["first"]]));
    let more = data["more_results"].as_array().unwrap();
    assert_eq!(
        more.len(),
        2,
        "the second row set and the CALL's own result"
    );
    assert_eq!(more[0]["rows"].as_array().unwrap().len(), 2000);
    assert_eq!(more[0]["rows"][1999][0], 2000);
    assert_eq!(more[1]["rows"], json!([]));

    // A batch streams too; rows as objects.
    let (status, body) = api
        .post(
            Some(APP_KEY),
            "/v1/batch",
            json!({"database": TEST_DB, "rows_as": "objects", "statements": [
                {"sql": format!("{WIDE_ROWS}3000")},
                {"sql": "SELECT 1 AS one"}
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["data"]["results"].as_array().unwrap();
    assert_eq!(results[0]["rows"].as_array().unwrap().len(), 3000);
    assert_eq!(results[0]["rows"][2999]["seq"], 3000);
    assert_eq!(results[1]["rows"], json!([{"one": 1}]));
}

#[tokio::test]
async fn a_failure_after_the_response_started_cannot_pass_for_success() {
    let api = Client::start("http_stream_fail", |c| {
        c.http.max_rows = 5000;
        c.pool.max_db_connections = 1;
    })
    .await;
    let before = api.sql("SELECT CONNECTION_ID()", json!([])).await;
    // The first 5,000 rows are more than the part kept back: the reply is streaming when
    // row 5,001 goes past http.max_rows.
    let mut response = api
        .http
        .post(format!("{}/v1/execute", api.base))
        .bearer_auth(APP_KEY)
        .json(&json!({"sql": format!("{WIDE_ROWS}8000"), "database": TEST_DB}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the reply had started");
    let mut received = Vec::new();
    let ended = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(ended.is_err(), "the response is cut, not completed");
    assert!(serde_json::from_slice::<Value>(&received).is_err());
    let text = String::from_utf8(received).unwrap();
    let last_line = text.trim_end().rsplit('\n').next().unwrap();
    let tail: Value = serde_json::from_str(last_line).unwrap();
    assert_eq!(tail["status"], "resultTooLarge", "{tail}");
    assert!(tail["message"].as_str().unwrap().contains("http.max_rows"));
    api.check_schema("/v1/execute", 507, &tail);
    // The rows past the limit were drained: the one connection carries on.
    let after = api.sql("SELECT CONNECTION_ID()", json!([])).await;
    assert_eq!(before["rows"], after["rows"]);
}

#[tokio::test]
async fn requests_beyond_the_cap_get_503_until_a_streamed_reply_ends() {
    let api = Client::start("http_request_cap", |c| {
        c.http.max_concurrent_requests = 1;
    })
    .await;
    let execute = |sql: String| {
        api.http
            .post(format!("{}/v1/execute", api.base))
            .bearer_auth(APP_KEY)
            .json(&json!({"sql": sql, "database": TEST_DB}))
            .send()
    };
    // A streamed reply whose body is not read yet is still in progress.
    let streaming = execute(format!("{WIDE_ROWS}20000")).await.unwrap();
    assert_eq!(streaming.status(), 200);
    let refused = execute("SELECT 1".into()).await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    api.check_schema("/v1/execute", 503, &body);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("http.max_concurrent_requests"),
        "{body}"
    );
    let whole: Value = streaming.json().await.unwrap();
    assert_eq!(whole["data"]["rows"].as_array().unwrap().len(), 20000);
    // Its last byte is sent: the place is free again.
    let data = api.sql("SELECT 2", json!([])).await;
    assert_eq!(data["rows"], json!([[2]]));
    let metrics = api.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_http_rejections_total{reason=\"max_concurrent_requests\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            "sluice_http_requests_total{endpoint=\"/v1/execute\",status=\"503\"}"
        ),
        1.0
    );
}

/// How a hostile socket behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Attack {
    /// Connects and sends nothing.
    Silent,
    /// Sends half its headers.
    HalfHeaders,
    /// Sends its headers, then a byte of its body every 100 ms.
    SlowBody,
}

/// Opens one hostile socket; the task ends with what the server sent once it closes it.
async fn attack(addr: std::net::SocketAddr, how: Attack) -> tokio::task::JoinHandle<Vec<u8>> {
    let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = socket.into_split();
    match how {
        Attack::Silent => {}
        Attack::HalfHeaders => writer
            .write_all(b"POST /v1/execute HTTP/1.1\r\nHost: sluice\r\n")
            .await
            .unwrap(),
        Attack::SlowBody => {
            let head = format!(
                "POST /v1/execute HTTP/1.1\r\nHost: sluice\r\nAuthorization: Bearer {APP_KEY}\r\n\
                 Content-Length: 1000\r\n\r\n{{\"sql\": "
            );
            writer.write_all(head.as_bytes()).await.unwrap();
            tokio::spawn(async move {
                while writer.write_all(b" ").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            return tokio::spawn(async move {
                let mut out = Vec::new();
                let _ = reader.read_to_end(&mut out).await;
                out
            });
        }
    }
    tokio::spawn(async move {
        let _keep_open = writer;
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out).await;
        out
    })
}

#[tokio::test]
async fn hostile_sockets_cannot_lock_clients_out() {
    const CAP: usize = 20;
    const ATTACKERS: usize = 60;
    let api = Client::start("http_hostile", |c| {
        c.http.max_connections = CAP;
        c.http.header_read_timeout = Duration::from_secs(1);
        c.http.body_read_timeout = Duration::from_secs(1);
    })
    .await;
    let addr = api.gw.http.unwrap();
    let kinds = [Attack::Silent, Attack::HalfHeaders, Attack::SlowBody];
    let mut attackers = Vec::new();
    for i in 0..ATTACKERS {
        let how = kinds[i % kinds.len()];
        attackers.push((how, attack(addr, how).await));
    }
    // The admin listener and the MySQL port answer all along.
    assert!(api.metrics().await.contains("sluice_http_rejections_total"));
    let mut mysql = api.gw.connect().await;
    let one: Option<u8> = mysql.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    mysql.disconnect().await.unwrap();

    // A legitimate client gets through once the sockets holding the slots time out.
    let started = std::time::Instant::now();
    let mut refused = 0;
    loop {
        match exchange(addr, &execute_request("SELECT 'through'")).await {
            Some((200, body)) => {
                assert_eq!(body["data"]["rows"], json!([["through"]]));
                break;
            }
            other => {
                assert!(
                    matches!(other, None | Some((503, _))),
                    "a refused client gets 503 or a closed socket: {other:?}"
                );
                refused += 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still locked out after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "legitimate request served {:?} into an attack of {ATTACKERS} sockets on {CAP} slots \
         ({refused} refusals first)",
        started.elapsed()
    );

    // Every attacker was closed: slot holders after their timeout (a slow body with 408),
    // the rest at once.
    for (i, (how, task)) in attackers.into_iter().enumerate() {
        let sent = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap_or_else(|_| panic!("attacker {i} ({how:?}) is still connected"))
            .unwrap();
        let response = String::from_utf8_lossy(&sent);
        if i >= CAP {
            assert!(
                sent.is_empty() || response.starts_with("HTTP/1.1 503"),
                "{response}"
            );
        } else if how == Attack::SlowBody {
            assert!(response.starts_with("HTTP/1.1 408"), "{response}");
            assert!(response.to_ascii_lowercase().contains("connection: close"));
            let (status, body) = parse_response(&sent).unwrap();
            assert_eq!(body["status"], "requestTimeout");
            api.check_schema("/v1/execute", status, &body);
        } else {
            assert!(sent.is_empty(), "attacker {i} ({how:?}) got {response}");
        }
    }
    let metrics = api.metrics().await;
    let rejected = |reason: &str| {
        metric_value(
            &metrics,
            &format!("sluice_http_rejections_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(
        rejected("max_connections"),
        (ATTACKERS - CAP + refused) as f64
    );
    assert_eq!(rejected("header_read_timeout"), 14.0);
    assert_eq!(rejected("body_read_timeout"), 6.0);
}

#[tokio::test]
async fn keep_alive_outlasts_the_header_timeout_then_closes() {
    let api = Client::start("http_keepalive", |c| {
        c.http.header_read_timeout = Duration::from_secs(1);
        c.http.keepalive_timeout = Duration::from_secs(4);
    })
    .await;
    let addr = api.gw.http.unwrap();
    let request = execute_request("SELECT 1");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut socket).await.unwrap().0, 200);
    // Idle for twice the header timeout: the keep-alive connection still serves.
    tokio::time::sleep(Duration::from_secs(2)).await;
    socket.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut socket).await.unwrap().0, 200);
    // Idle past keepalive_timeout: closed.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), socket.read_to_end(&mut rest));
    assert!(
        closed.await.is_ok(),
        "an idle keep-alive connection is closed"
    );
    assert!(rest.is_empty());

    // Once a later request's first byte arrives, its headers get header_read_timeout.
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut socket).await.unwrap().0, 200);
    socket.write_all(&request.as_bytes()[..20]).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(15), socket.read_to_end(&mut rest));
    assert!(closed.await.is_ok(), "a half-sent request is closed");
    let metrics = api.metrics().await;
    let rejected = |reason: &str| {
        metric_value(
            &metrics,
            &format!("sluice_http_rejections_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(rejected("keepalive_timeout"), 1.0);
    assert_eq!(rejected("header_read_timeout"), 1.0);
}
