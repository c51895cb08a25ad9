// A HikariCP pool of 10 pgJDBC connections through a Tether gateway port runs
// <total> inserts on 10 threads while the test kills the agent that serves them.
// Run without a build step (Java 17 source launcher):
//   java -cp /usr/share/java/HikariCP.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/postgresql.jar \
//     tests/java/HikariFailover.java <jdbc-url> <user> <table> <total> <halfway> <gate>
//
// Each query inserts one id (autocommit). A query that fails with a connection
// error (SQLState class 08, or the pool timing out for a connection) is retried
// on another connection from the pool, as an application using a pool would;
// any other error fails the program. Inserts use ON CONFLICT DO NOTHING, so a
// retry of an insert whose commit reached the server but whose answer was lost
// commits nothing twice; it is counted as "ambiguous".
//
// Coordination with the test, without sleeping: after <halfway> committed
// inserts the program prints HALFWAY; no worker starts query <gate> or later
// until the test writes a line to stdin (it does so after killing the agent), so
// the kill always lands while the pool is in use. At the end the program reads
// count(*) back through the pool and prints
//   HIKARI_OK committed=<n> rows=<count> connection_errors=<e> ambiguous=<a>
// or exits 1 with the reason.
import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.SQLTransientConnectionException;
import java.sql.Statement;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.ArrayList;
import java.util.List;

public class HikariFailover {
    static final int THREADS = 10;
    static final int MAX_ATTEMPTS = 30;

    public static void main(String[] args) {
        try {
            if (args.length != 6) {
                throw new IllegalArgumentException(
                        "usage: HikariFailover <jdbc-url> <user> <table> <total> <halfway> <gate>");
            }
            String table = args[2];
            if (!table.matches("[a-z_][a-z0-9_]{0,62}")) {
                throw new IllegalArgumentException("table name must be a plain identifier: " + table);
            }
            run(args[0], args[1], table, Integer.parseInt(args[3]), Integer.parseInt(args[4]),
                    Integer.parseInt(args[5]));
        } catch (Throwable t) {
            System.out.println("HIKARI_FAIL " + t);
            for (Throwable c = t.getCause(); c != null; c = c.getCause()) {
                System.out.println("  caused by: " + c);
            }
            t.printStackTrace(System.err);
            System.exit(1);
        }
    }

    static boolean connectionError(SQLException e) {
        String state = e.getSQLState();
        return e instanceof SQLTransientConnectionException || (state != null && state.startsWith("08"));
    }

    static void run(String url, String user, String table, int total, int halfway, int gate) throws Exception {
        HikariConfig cfg = new HikariConfig();
        cfg.setJdbcUrl(url);
        cfg.setUsername(user);
        cfg.setMaximumPoolSize(THREADS);
        cfg.setMinimumIdle(THREADS);
        cfg.setConnectionTimeout(10_000);
        cfg.setValidationTimeout(5_000);
        // A broken tunnel must fail a query, not hang it.
        cfg.addDataSourceProperty("connectTimeout", "10");
        cfg.addDataSourceProperty("socketTimeout", "30");
        try (HikariDataSource ds = new HikariDataSource(cfg)) {
            try (Connection c = ds.getConnection(); Statement st = c.createStatement()) {
                st.execute("create table " + table + " (id integer primary key, v bigint not null)");
            }
            AtomicInteger next = new AtomicInteger(1);
            AtomicInteger committed = new AtomicInteger();
            AtomicInteger connectionErrors = new AtomicInteger();
            AtomicInteger ambiguous = new AtomicInteger();
            AtomicBoolean halfwayPrinted = new AtomicBoolean();
            CountDownLatch released = new CountDownLatch(1);
            Thread stdin = new Thread(() -> {
                try {
                    new BufferedReader(new InputStreamReader(System.in)).readLine();
                } catch (Exception e) {
                    // EOF or error: release anyway, the test decides.
                }
                released.countDown();
            });
            stdin.setDaemon(true);
            stdin.start();

            ExecutorService pool = Executors.newFixedThreadPool(THREADS);
            List<Future<?>> workers = new ArrayList<>();
            for (int t = 0; t < THREADS; t++) {
                workers.add(pool.submit(() -> {
                    for (int id = next.getAndIncrement(); id <= total; id = next.getAndIncrement()) {
                        if (id >= gate && !released.await(120, TimeUnit.SECONDS)) {
                            throw new IllegalStateException("the test never released the gate at " + gate);
                        }
                        insert(ds, table, id, connectionErrors, ambiguous);
                        if (committed.incrementAndGet() >= halfway && halfwayPrinted.compareAndSet(false, true)) {
                            System.out.println("HALFWAY");
                            System.out.flush();
                        }
                    }
                    return null;
                }));
            }
            pool.shutdown();
            for (Future<?> w : workers) {
                w.get(300, TimeUnit.SECONDS);
            }
            long rows;
            try (Connection c = ds.getConnection();
                 Statement st = c.createStatement();
                 ResultSet rs = st.executeQuery("select count(*) from " + table)) {
                rs.next();
                rows = rs.getLong(1);
            }
            System.out.println("HIKARI_OK committed=" + committed.get() + " rows=" + rows
                    + " connection_errors=" + connectionErrors.get() + " ambiguous=" + ambiguous.get());
            if (rows != committed.get()) {
                throw new IllegalStateException("the database holds " + rows + " rows, the client committed "
                        + committed.get());
            }
        }
    }

    // One insert, retried on connection errors until it commits.
    static void insert(HikariDataSource ds, String table, int id, AtomicInteger connectionErrors,
            AtomicInteger ambiguous) throws SQLException {
        SQLException last = null;
        for (int attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
            try (Connection c = ds.getConnection();
                 PreparedStatement ps = c.prepareStatement(
                         "insert into " + table + " (id, v) values (?, ?) on conflict (id) do nothing")) {
                ps.setInt(1, id);
                ps.setLong(2, id * 7L);
                if (ps.executeUpdate() == 0) {
                    if (attempt == 1) {
                        throw new IllegalStateException("id " + id + " was inserted twice");
                    }
                    ambiguous.incrementAndGet();
                }
                return;
            } catch (SQLException e) {
                if (!connectionError(e)) {
                    throw e;
                }
                connectionErrors.incrementAndGet();
                last = e;
            }
        }
        throw new SQLException("id " + id + " failed " + MAX_ATTEMPTS + " times with connection errors", last);
    }
}
