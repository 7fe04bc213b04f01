use super::*;

fn of(sql: &str) -> Analysis {
    analyze(sql.as_bytes(), true)
}

fn reason(sql: &str) -> Option<&'static str> {
    of(sql).pin
}

#[test]
fn pins_by_reason() {
    assert_eq!(reason("SET @x = 1"), Some("user_variable"));
    assert_eq!(reason("SELECT @x := id FROM t"), Some("user_variable"));
    assert_eq!(reason("SELECT * FROM t WHERE email = 'a@b.com'"), None);
    assert_eq!(reason("SELECT @@session.sql_mode, @@autocommit"), None);
    assert_eq!(
        reason("create temporary table t (a int)"),
        Some("temporary_table")
    );
    assert_eq!(
        reason("CREATE OR REPLACE TEMPORARY TABLE t (a int)"),
        Some("temporary_table")
    );
    assert_eq!(reason("SELECT GET_LOCK('job', 10)"), Some("named_lock"));
    assert_eq!(reason("select get_lock ('job', 10)"), Some("named_lock"));
    assert_eq!(reason("LOCK TABLES t WRITE"), Some("table_lock"));
    assert_eq!(reason("FLUSH TABLES WITH READ LOCK"), Some("table_lock"));
    assert_eq!(reason("FLUSH TABLES t FOR EXPORT"), Some("table_lock"));
    assert_eq!(reason("PREPARE s FROM 'SELECT 1'"), Some("sql_prepare"));
    assert_eq!(reason("EXECUTE s"), Some("sql_prepare"));
    assert_eq!(
        reason("SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 1"),
        Some("found_rows")
    );
    assert_eq!(reason("CALL p()"), Some("stored_procedure"));
    assert_eq!(reason("HANDLER t OPEN"), Some("handler"));
    assert_eq!(reason("XA START 'x'"), Some("xa_transaction"));
    assert_eq!(reason("SET ROLE admin"), Some("role"));
    assert_eq!(reason("SET insert_id = 5"), Some("one_shot_variable"));
    assert_eq!(reason("SET NAMES sjis"), Some("charset"));
    assert_eq!(
        reason("BEGIN NOT ATOMIC SELECT 1; END"),
        Some("compound_statement")
    );
    assert_eq!(
        reason("IF 1 THEN SELECT 1; END IF"),
        Some("compound_statement")
    );
    assert_eq!(
        reason("lbl: LOOP LEAVE lbl; END LOOP"),
        Some("compound_statement")
    );
    assert_eq!(
        reason("EXECUTE IMMEDIATE CONCAT('SELECT ', 1)"),
        Some("dynamic_sql")
    );
    assert_eq!(
        reason("EXECUTE IMMEDIATE 'SELECT GET_LOCK(1, 0)'"),
        Some("named_lock")
    );
    assert_eq!(reason("SET GLOBAL a = 1, @@b = 2"), Some("unparsed_set"));
    assert_eq!(reason("SET x"), Some("unparsed_set"));
    assert_eq!(reason("SELECT 1 -- @x\n"), None);
    assert_eq!(reason("SELECT 1 /* @x */"), None);
    assert_eq!(reason("SELECT 1 /*! , @x */"), Some("user_variable"));
    assert_eq!(reason("SELECT \"it's @x\""), None);
    assert_eq!(reason("UPDATE t SET a = 1"), None);
    assert_eq!(reason("SELECT IF(a, 1, 2) FROM t"), None);
    assert_eq!(reason("BEGIN"), None);
}

#[test]
fn known_and_unknown_statements() {
    for known in [
        "SELECT 1",
        "(SELECT 1) UNION (SELECT 2)",
        "insert into t values (1)",
        "BEGIN",
        "START TRANSACTION READ ONLY",
        "COMMIT",
        "USE db",
        "SET time_zone = '+01:00'",
        "SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci",
        "CREATE TABLE t (a INT)",
        "SHOW TABLES",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    ] {
        assert!(!of(known).unknown, "{known}");
    }
    for unknown in [
        "INSTALL PLUGIN x SONAME 'y'",
        "SIGNAL SQLSTATE '45000'",
        "BINLOG 'x'",
    ] {
        assert!(of(unknown).unknown, "{unknown}");
    }
    assert_eq!(of("SELECT 1; SELECT 2;").statements, 2);
    assert!(of("SELECT 1; ALTER TABLE t ADD c INT").ddl);
    assert!(of("drop table t").ddl);
    assert_eq!(of("SET a = 1, @@b = (1, 2), NAMES utf8").assignments, 3);
    assert!(of("ROLLBACK").ends_transaction);
    assert!(!of("SELECT 1").ddl);
}

#[test]
fn set_forms_are_rewritten_to_a_tracked_scope() {
    let inserts = |sql: &str| {
        let a = of(sql);
        assert_eq!(a.pin, None, "{sql}");
        rewrite(sql.as_bytes(), &a, |_| None).map(|v| String::from_utf8(v).unwrap())
    };
    assert_eq!(
        inserts("SET @@autocommit=0").as_deref(),
        Some("SET @@session.autocommit=0")
    );
    assert_eq!(
        inserts("set @@sql_mode = CONCAT(@@sql_mode, ',ANSI'), @@time_zone='+00:00'").as_deref(),
        Some("set @@session.sql_mode = CONCAT(@@sql_mode, ',ANSI'), @@session.time_zone='+00:00'")
    );
    assert_eq!(inserts("SET @@session.autocommit=0"), None);
    assert_eq!(inserts("SET @@LOCAL.autocommit=0"), None);
    assert_eq!(inserts("SET SESSION wait_timeout = 100"), None);
    assert_eq!(
        inserts("SET wait_timeout := 100, LOCAL sql_mode = ''"),
        None
    );
    assert_eq!(inserts("SET @@global.wait_timeout = 100"), None);
    assert_eq!(
        inserts("SET GLOBAL wait_timeout = 100, sql_mode = ''"),
        None
    );
    assert_eq!(
        inserts("SET CHARACTER SET utf8, @@sql_mode=''").as_deref(),
        Some("SET CHARACTER SET utf8, @@session.sql_mode=''")
    );
    assert_eq!(of("SET session_track_schema = OFF").sets_tracking, 1);
    assert_eq!(
        of("SET @@SESSION_TRACK_system_variables = ''").sets_tracking,
        4
    );
    assert_eq!(
        of("SET session_track_transaction_info = STATE").sets_tracking,
        0x80
    );
    assert!(of("SET TRANSACTION ISOLATION LEVEL READ COMMITTED").next_transaction);
    assert!(of("SET NAMES utf8mb4 COLLATE utf8mb4_bin").sets_charset);
    let next = of("SET @@tx_isolation = 'READ-COMMITTED'");
    assert!(next.next_transaction && next.scope_inserts.is_empty());
    assert!(!of("SET @@session.tx_read_only = 1").next_transaction);
    assert!(of("SELECT 1; SELECT LAST_INSERT_ID()").reads_last_insert_id);
    assert!(!of("SELECT LAST_INSERT_ID(3)").reads_last_insert_id);
    assert!(of("SELECT 1; insert into t values (1)").may_set_insert_id);
    assert!(!of("UPDATE t SET a = 1").may_set_insert_id);
    assert!(of("SET @@collation_connection = 'latin1_bin'").sets_charset);
    assert!(!of("SET @@collation_connection = 'latin1_bin'").sets_names);
    assert!(of("SET NAMES utf8mb4 COLLATE utf8mb4_bin").sets_names);
    assert!(of("SET CHARACTER SET latin1").sets_names);
    assert!(!of("SET sql_mode = ''").sets_charset);
    assert!(!of("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").next_transaction);
    let statement = of("SET STATEMENT sql_mode = '' FOR SELECT GET_LOCK('a', 0)");
    assert!(statement.temporary_variables);
    assert_eq!(statement.pin, Some("named_lock"));
}

#[test]
fn finds_session_functions_in_the_first_statement_only() {
    let sql = "SELECT LAST_INSERT_ID(), row_count( ) + 1, 'FOUND_ROWS()'; SELECT FOUND_ROWS()";
    let analysis = of(sql);
    let found = &analysis.functions;
    assert_eq!(found.len(), 2);
    assert_eq!(&sql[found[0].range.clone()], "LAST_INSERT_ID()");
    assert!(found[0].select_item);
    assert_eq!(found[1].function, SessionFunction::RowCount);
    assert!(!found[1].select_item, "part of an expression");
    let with_arg = of("SELECT LAST_INSERT_ID(5)");
    assert!(with_arg.functions.is_empty());
    assert!(with_arg.sets_last_insert_id);
    assert!(of("UPDATE seq SET id = LAST_INSERT_ID(id + 1)").sets_last_insert_id);
    let rewritten = rewrite(sql.as_bytes(), &analysis, |f| {
        Some(match f {
            SessionFunction::LastInsertId => "42".into(),
            _ => "7".into(),
        })
    });
    assert_eq!(
        rewritten.as_deref(),
        Some(&b"SELECT 42 AS `LAST_INSERT_ID()`, 7 + 1, 'FOUND_ROWS()'; SELECT FOUND_ROWS()"[..])
    );
    let id = of("select connection_id() from dual").functions;
    assert_eq!(id[0].function, SessionFunction::ConnectionId);
    assert!(id[0].select_item);
    let filter = of("DELETE FROM t WHERE id = LAST_INSERT_ID()").functions;
    assert!(!filter[0].select_item, "no alias in a WHERE clause");
}

#[test]
fn multi_byte_text_before_a_function_is_rewritten_whole() {
    let sql = "SELECT /*€€*/LAST_INSERT_ID()";
    let analysis = of(sql);
    assert_eq!(analysis.functions.len(), 1);
    let out = rewrite(sql.as_bytes(), &analysis, |_| Some("9".into())).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "SELECT /*€€*/9 AS `LAST_INSERT_ID()`"
    );
    let sql = "SELECT 'ü€',LAST_INSERT_ID()";
    let out = rewrite(sql.as_bytes(), &of(sql), |_| Some("9".into())).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "SELECT 'ü€',9 AS `LAST_INSERT_ID()`"
    );
}

#[test]
fn recognises_kill_forms() {
    let kill = |sql: &str| of(sql).kill;
    let k = |query_only, target| Some(Kill { query_only, target });
    assert_eq!(kill("KILL 12"), k(false, KillTarget::Id(12)));
    assert_eq!(kill("kill query 7;"), k(true, KillTarget::Id(7)));
    assert_eq!(kill("KILL HARD CONNECTION 9"), k(false, KillTarget::Id(9)));
    assert_eq!(kill("KILL CONNECTION_ID()"), k(false, KillTarget::Own));
    assert_eq!(
        kill("KILL QUERY connection_id ( )"),
        k(true, KillTarget::Own)
    );
    assert_eq!(
        kill("KILL USER bob"),
        k(false, KillTarget::User("bob".into()))
    );
    assert_eq!(
        kill("KILL QUERY USER 'bob'@'%'"),
        k(true, KillTarget::User("bob".into()))
    );
    assert_eq!(kill("KILL QUERY ID 5"), k(true, KillTarget::QueryId(5)));
    assert_eq!(kill("SELECT 1"), None);
    assert_eq!(
        of("SELECT kill FROM t").refusal,
        None,
        "a column named kill"
    );
}

#[test]
fn refuses_kill_where_sluice_cannot_carry_it_out() {
    for sql in [
        "KILL 1; DROP TABLE t",
        "SELECT 1; KILL 3",
        "KILL 1 + 1",
        "KILL @x",
        "EXECUTE IMMEDIATE 'KILL 5'",
        "EXECUTE IMMEDIATE 'SELECT 1; KILL QUERY 5'",
        "PREPARE s FROM 'KILL 5'",
        "BEGIN NOT ATOMIC KILL 5; END",
        "IF 1 THEN KILL 5; END IF",
        "CREATE PROCEDURE p() BEGIN SELECT 1; KILL 5; END",
        "CREATE DEFINER=`root`@`%` PROCEDURE p() KILL 5",
        "CREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW BEGIN IF 1 THEN KILL 5; END IF; END",
        "/*!50000 KILL */ 5; SELECT 1",
    ] {
        assert!(of(sql).refusal.is_some(), "{sql}");
        assert_eq!(of(sql).kill, None, "{sql}");
    }
}

#[test]
fn stored_program_definitions_are_one_statement() {
    let sql = "CREATE PROCEDURE p() BEGIN SET @@autocommit = 0; SET @x = 1; \
               CASE WHEN 1 THEN SELECT 1; END CASE; IF 1 THEN SELECT 2; END IF; END; \
               SET @@wait_timeout = 100";
    let analysis = of(sql);
    assert_eq!(analysis.pin, None, "the body is not run now");
    assert_eq!(analysis.statements, 2);
    assert_eq!(
        analysis.scope_inserts.len(),
        1,
        "only the SET after the definition"
    );
    assert_eq!(&sql[analysis.scope_inserts[0].clone()], "wait_timeout");
}

#[test]
fn no_backslash_escapes_changes_where_strings_end() {
    let sql = br"SELECT 'a\'; SET @@autocommit = 0; -- '";
    assert!(analyze(sql, true).scope_inserts.is_empty());
    assert_eq!(analyze(sql, false).scope_inserts.len(), 1);
}

#[test]
fn any_bytes_are_analysed_without_panicking() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let pieces: [&[u8]; 24] = [
        b"SET ",
        b"@@",
        b"@",
        b"KILL ",
        b"'",
        b"\"",
        b"`",
        b"/*",
        b"*/",
        b"/*!",
        b"-- ",
        b"#",
        b"\n",
        b";",
        b"(",
        b")",
        b",",
        b"=",
        b"LAST_INSERT_ID(",
        b"CONNECTION_ID()",
        "€".as_bytes(),
        b"\\",
        b"BEGIN NOT ATOMIC ",
        b"CREATE PROCEDURE p() BEGIN ",
    ];
    for _ in 0..20_000 {
        let mut sql = Vec::new();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 12) as usize;
        for n in 0..len {
            let pick = (seed >> (n * 5 % 60)) as usize;
            if pick.is_multiple_of(5) {
                sql.push((pick >> 3) as u8);
            } else {
                sql.extend_from_slice(pieces[pick % pieces.len()]);
            }
        }
        for escapes in [true, false] {
            let analysis = analyze(&sql, escapes);
            let _ = rewrite(&sql, &analysis, |_| Some("1".into()));
        }
    }
}

#[test]
fn local_infile_is_told_from_a_server_side_file() {
    for sql in [
        "LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE t",
        "load data low_priority local /* the client's */ infile 'x' into table t",
        "LOAD XML LOCAL INFILE 'x.xml' INTO TABLE t",
        "SELECT 1; LOAD DATA /*!LOCAL*/ INFILE 'x' INTO TABLE t",
    ] {
        assert!(of(sql).local_infile, "{sql}");
    }
    for sql in [
        "LOAD DATA INFILE '/tmp/x' INTO TABLE t",
        "SELECT 'LOCAL INFILE'",
        "SELECT infile FROM local_files",
    ] {
        assert!(!of(sql).local_infile, "{sql}");
    }
}

#[test]
fn transaction_ends_and_access_modes() {
    for sql in ["COMMIT", "rollback", "ROLLBACK WORK", "COMMIT AND CHAIN"] {
        assert!(of(sql).ends_transaction, "{sql}");
    }
    for sql in [
        "ROLLBACK TO sp1",
        "ROLLBACK WORK TO SAVEPOINT sp1",
        "SELECT 'COMMIT'",
    ] {
        assert!(!of(sql).ends_transaction, "{sql}");
    }
    for sql in [
        "START TRANSACTION READ ONLY",
        "start transaction with consistent snapshot, read write",
    ] {
        assert!(of(sql).starts_with_characteristics, "{sql}");
    }
    for sql in [
        "START TRANSACTION",
        "START TRANSACTION WITH CONSISTENT SNAPSHOT",
        "BEGIN",
        "START TRANSACTION; SELECT 'READ'",
    ] {
        assert!(!of(sql).starts_with_characteristics, "{sql}");
    }
}

#[test]
fn a_function_s_value_keeps_the_call_s_type() {
    assert_eq!(
        SessionFunction::RowCount.typed(-1),
        "IF(1, -1, ROW_COUNT())"
    );
    assert_eq!(
        SessionFunction::ConnectionId.typed(7u32),
        "IF(1, CAST(7 AS UNSIGNED), CONNECTION_ID())"
    );
}
