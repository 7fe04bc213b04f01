/*
 * Server-side prepared statements with MariaDB Connector/C (libmariadb), the library behind
 * the mariadb client, PHP's mysqlnd-free builds, Python's mariadb and many ORMs. It binds
 * parameter types only on the first execute after mysql_stmt_bind_param, so through a gateway
 * that moves statements between database connections the types must follow the client.
 *
 *   stmt_check PORT USER PASSWORD DATABASE
 *
 * Two connections (A and B) are opened; the checks are meant for a gateway with one database
 * connection, so A and B share it, but they hold directly against the server too. Prints one
 * line per check and "N passed, M failed"; exits 1 when any check failed.
 */
#include <mysql.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed, failed;
static char why[512];

/* Records why the current check fails; returns 0 so checks can `return fail(...)`. */
static int fail(const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(why, sizeof why, format, args);
    va_end(args);
    return 0;
}

static void check(const char *name, int (*body)(MYSQL *, MYSQL *), MYSQL *a, MYSQL *b) {
    why[0] = 0;
    if (body(a, b)) {
        passed++;
        printf("ok   %s\n", name);
    } else {
        failed++;
        printf("FAIL %s: %s\n", name, why);
    }
}

static MYSQL_STMT *prepare(MYSQL *conn, const char *sql) {
    MYSQL_STMT *stmt = mysql_stmt_init(conn);
    if (stmt && mysql_stmt_prepare(stmt, sql, strlen(sql)) != 0) {
        fail("prepare %s: %s", sql, mysql_stmt_error(stmt));
        mysql_stmt_close(stmt);
        return NULL;
    }
    return stmt;
}

static int query(MYSQL *conn, const char *sql) {
    if (mysql_query(conn, sql) != 0) {
        return fail("%s: %s", sql, mysql_error(conn));
    }
    MYSQL_RES *result = mysql_store_result(conn);
    if (result) mysql_free_result(result);
    return 1;
}

/* Runs `stmt` (already bound) and fetches its single string column into `out`. */
static int execute_string(MYSQL_STMT *stmt, char *out, size_t size, my_bool *is_null) {
    unsigned long length = 0;
    MYSQL_BIND column;
    memset(&column, 0, sizeof column);
    column.buffer_type = MYSQL_TYPE_STRING;
    column.buffer = out;
    column.buffer_length = size - 1;
    column.length = &length;
    column.is_null = is_null;
    if (mysql_stmt_execute(stmt) != 0) return fail("execute: %s", mysql_stmt_error(stmt));
    if (mysql_stmt_bind_result(stmt, &column) != 0) return fail("bind result: %s", mysql_stmt_error(stmt));
    if (mysql_stmt_fetch(stmt) != 0) return fail("fetch: %s", mysql_stmt_error(stmt));
    out[length < size ? length : size - 1] = 0;
    mysql_stmt_free_result(stmt);
    return 1;
}

/* A binds an integer, B a string, to the same statement text; they take turns. Each
 * execute after the first binds no types, relying on what the server remembers. */
static int types_follow_each_client(MYSQL *a, MYSQL *b) {
    const char *sql = "SELECT CONCAT('v=', ?)";
    MYSQL_STMT *sa = prepare(a, sql), *sb = prepare(b, sql);
    if (!sa || !sb) return 0;
    long long number = 0;
    char text[32];
    unsigned long text_length = 0;
    MYSQL_BIND pa, pb;
    memset(&pa, 0, sizeof pa);
    pa.buffer_type = MYSQL_TYPE_LONGLONG;
    pa.buffer = &number;
    memset(&pb, 0, sizeof pb);
    pb.buffer_type = MYSQL_TYPE_STRING;
    pb.buffer = text;
    pb.length = &text_length;
    if (mysql_stmt_bind_param(sa, &pa) || mysql_stmt_bind_param(sb, &pb)) return fail("bind param");
    int ok = 1;
    for (int i = 0; i < 50 && ok; i++) {
        char got[64], want[64];
        my_bool is_null = 0;
        number = 1000000000000LL + i;
        ok = execute_string(sa, got, sizeof got, &is_null);
        snprintf(want, sizeof want, "v=%lld", number);
        if (ok && strcmp(got, want) != 0) ok = fail("A round %d: got '%s', want '%s'", i, got, want);
        snprintf(text, sizeof text, "s%d", i);
        text_length = strlen(text);
        if (ok) ok = execute_string(sb, got, sizeof got, &is_null);
        snprintf(want, sizeof want, "v=s%d", i);
        if (ok && strcmp(got, want) != 0) ok = fail("B round %d: got '%s', want '%s'", i, got, want);
    }
    mysql_stmt_close(sa);
    mysql_stmt_close(sb);
    return ok;
}

static int nulls_both_ways(MYSQL *a, MYSQL *b) {
    (void)b;
    MYSQL_STMT *stmt = prepare(a, "SELECT IF(? IS NULL, NULL, 'not null')");
    if (!stmt) return 0;
    my_bool param_null = 1;
    long long unused = 0;
    MYSQL_BIND param;
    memset(&param, 0, sizeof param);
    param.buffer_type = MYSQL_TYPE_LONGLONG;
    param.buffer = &unused;
    param.is_null = &param_null;
    if (mysql_stmt_bind_param(stmt, &param)) return fail("bind: %s", mysql_stmt_error(stmt));
    char got[32];
    my_bool result_null = 0;
    int ok = execute_string(stmt, got, sizeof got, &result_null);
    if (ok && !result_null) ok = fail("a NULL parameter gave '%s', not NULL", got);
    param_null = 0;
    if (ok) ok = execute_string(stmt, got, sizeof got, &result_null);
    if (ok && (result_null || strcmp(got, "not null") != 0)) ok = fail("a value gave NULL or '%s'", got);
    mysql_stmt_close(stmt);
    return ok;
}

static uint32_t crc32_of(const unsigned char *data, size_t length) {
    uint32_t crc = 0xffffffffu;
    for (size_t i = 0; i < length; i++) {
        crc ^= data[i];
        for (int bit = 0; bit < 8; bit++) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* 3 MiB sent in 64 KiB pieces with mysql_stmt_send_long_data, then read back. */
static int long_data_arrives_whole(MYSQL *a, MYSQL *b) {
    (void)b;
    const size_t total = 3u << 20, piece = 64u << 10;
    unsigned char *blob = malloc(total);
    if (!blob) return fail("out of memory");
    for (size_t i = 0; i < total; i++) blob[i] = (unsigned char)(i * 7 + (i >> 13));
    int ok = query(a, "CREATE OR REPLACE TABLE stmt_blob (id INT PRIMARY KEY, b LONGBLOB)");
    MYSQL_STMT *insert = ok ? prepare(a, "INSERT INTO stmt_blob VALUES (1, ?)") : NULL;
    if (!insert) ok = 0;
    MYSQL_BIND param;
    memset(&param, 0, sizeof param);
    param.buffer_type = MYSQL_TYPE_LONG_BLOB;
    if (ok && mysql_stmt_bind_param(insert, &param)) ok = fail("bind: %s", mysql_stmt_error(insert));
    for (size_t sent = 0; ok && sent < total; sent += piece) {
        if (mysql_stmt_send_long_data(insert, 0, (const char *)blob + sent, piece))
            ok = fail("send_long_data: %s", mysql_stmt_error(insert));
    }
    if (ok && mysql_stmt_execute(insert)) ok = fail("execute: %s", mysql_stmt_error(insert));
    if (insert) mysql_stmt_close(insert);
    if (ok && mysql_query(a, "SELECT LENGTH(b), CRC32(b) FROM stmt_blob WHERE id = 1")) ok = fail("%s", mysql_error(a));
    if (ok) {
        MYSQL_RES *result = mysql_store_result(a);
        MYSQL_ROW row = result ? mysql_fetch_row(result) : NULL;
        unsigned long length = row ? strtoul(row[0], NULL, 10) : 0;
        unsigned long crc = row ? strtoul(row[1], NULL, 10) : 0;
        if (length != total || crc != crc32_of(blob, total))
            ok = fail("stored %lu bytes with CRC32 %lu; sent %zu with %u", length, crc, total, crc32_of(blob, total));
        if (result) mysql_free_result(result);
    }
    free(blob);
    return ok;
}

/* Reads a read-only cursor in prefetches of 3; stops after `stop_after` rows (0 = all). */
static int read_cursor(MYSQL *a, int stop_after, long long *sum, int *rows) {
    MYSQL_STMT *stmt = prepare(a, "SELECT seq FROM seq_1_to_20");
    if (!stmt) return 0;
    unsigned long cursor = CURSOR_TYPE_READ_ONLY, prefetch = 3;
    mysql_stmt_attr_set(stmt, STMT_ATTR_CURSOR_TYPE, &cursor);
    mysql_stmt_attr_set(stmt, STMT_ATTR_PREFETCH_ROWS, &prefetch);
    long long value = 0;
    MYSQL_BIND column;
    memset(&column, 0, sizeof column);
    column.buffer_type = MYSQL_TYPE_LONGLONG;
    column.buffer = &value;
    int ok = 1;
    if (mysql_stmt_execute(stmt)) ok = fail("execute: %s", mysql_stmt_error(stmt));
    if (ok && mysql_stmt_bind_result(stmt, &column)) ok = fail("bind: %s", mysql_stmt_error(stmt));
    *sum = 0;
    *rows = 0;
    while (ok && (stop_after == 0 || *rows < stop_after)) {
        int status = mysql_stmt_fetch(stmt);
        if (status == MYSQL_NO_DATA) break;
        if (status != 0) {
            ok = fail("fetch: %s", mysql_stmt_error(stmt));
            break;
        }
        *sum += value;
        (*rows)++;
    }
    if (ok && stop_after && mysql_stmt_reset(stmt)) ok = fail("reset: %s", mysql_stmt_error(stmt));
    mysql_stmt_close(stmt);
    return ok;
}

static int cursors_read_all_rows_and_let_go(MYSQL *a, MYSQL *b) {
    long long sum;
    int rows;
    if (!read_cursor(a, 0, &sum, &rows)) return 0;
    if (rows != 20 || sum != 210) return fail("cursor gave %d rows summing to %lld", rows, sum);
    /* The cursor is exhausted and closed: B gets the (only) database connection. */
    if (!query(b, "SELECT 1")) return 0;
    if (!read_cursor(a, 5, &sum, &rows)) return 0;
    if (rows != 5 || sum != 15) return fail("partial cursor gave %d rows summing to %lld", rows, sum);
    /* Reset and closed half way: B still gets it. */
    return query(b, "SELECT 2");
}

static int closed_statements_prepare_again(MYSQL *a, MYSQL *b) {
    (void)b;
    for (int round = 0; round < 3; round++) {
        MYSQL_STMT *stmt = prepare(a, "SELECT CONCAT('round ', 1 + 1)");
        if (!stmt) return 0;
        char got[32];
        my_bool is_null = 0;
        int ok = execute_string(stmt, got, sizeof got, &is_null);
        mysql_stmt_close(stmt);
        if (!ok) return 0;
        if (strcmp(got, "round 2") != 0) return fail("round %d gave '%s'", round, got);
    }
    return 1;
}

static int a_dropped_table_is_the_servers_error(MYSQL *a, MYSQL *b) {
    if (!query(b, "CREATE OR REPLACE TABLE stmt_gone (x INT)")) return 0;
    MYSQL_STMT *stmt = prepare(a, "SELECT CONCAT('x=', x) FROM stmt_gone");
    if (!stmt) return 0;
    int ok = query(b, "DROP TABLE stmt_gone");
    if (ok && mysql_stmt_execute(stmt) == 0) ok = fail("execute succeeded on a dropped table");
    if (ok && mysql_stmt_errno(stmt) != 1146)
        ok = fail("error %u (%s), want 1146", mysql_stmt_errno(stmt), mysql_stmt_error(stmt));
    mysql_stmt_close(stmt);
    return ok && query(a, "SELECT 'still here'");
}

static MYSQL *open_connection(const char *port, const char *user, const char *password, const char *db) {
    MYSQL *conn = mysql_init(NULL);
    my_bool no_tls = 0;
    mysql_optionsv(conn, MYSQL_OPT_SSL_ENFORCE, &no_tls);
    if (!mysql_real_connect(conn, "127.0.0.1", user, password, db, (unsigned)atoi(port), NULL, 0)) {
        printf("FAIL connect: %s\n", mysql_error(conn));
        exit(1);
    }
    return conn;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s PORT USER PASSWORD DATABASE\n", argv[0]);
        return 2;
    }
    MYSQL *a = open_connection(argv[1], argv[2], argv[3], argv[4]);
    MYSQL *b = open_connection(argv[1], argv[2], argv[3], argv[4]);
    check("parameter types follow each client (bound once, executed 50 times in turn)",
          types_follow_each_client, a, b);
    check("NULL parameters and NULL results", nulls_both_ways, a, b);
    check("3 MiB of long data in 64 KiB pieces arrives whole", long_data_arrives_whole, a, b);
    check("a read-only cursor reads every row, is reset half way, and lets go",
          cursors_read_all_rows_and_let_go, a, b);
    check("closed statements are prepared again", closed_statements_prepare_again, a, b);
    check("a table dropped after prepare gives the server's 1146 at execute",
          a_dropped_table_is_the_servers_error, a, b);
    query(a, "DROP TABLE IF EXISTS stmt_blob");
    mysql_close(a);
    mysql_close(b);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
