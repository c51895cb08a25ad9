// End-to-end check with a real JDBC driver: pgjdbc (jdbc:postgresql:) or
// MariaDB Connector/J (jdbc:mariadb:). Run without a build step (Java 17
// source launcher):
//   java -cp /usr/share/java/postgresql.jar tests/java/JdbcQuery.java <jdbc-url> <user> <expected-rows>
//   java -cp /usr/share/java/mariadb-java-client.jar tests/java/JdbcQuery.java <jdbc-url> <user> <expected-rows>
// Creates a TEMPORARY table, inserts <expected-rows> rows with a PreparedStatement
// in one transaction, reads them back, checks count and sum, runs `select version()`,
// and prints one final line `JDBC_OK rows=<n> sum=<s>`. On any failure it prints the
// exception chain to stderr and exits with status 1. No password: the server uses trust auth.
//
// Through Tether's SOCKS5 front, add -DsocksProxyHost=H -DsocksProxyPort=P
// -Dtether.socks.username=<pool> and put the API key in TETHER_SOCKS_PASSWORD:
// the JVM answers a SOCKS5 password request only through an Authenticator,
// which this program installs (the key stays off the command line).
import java.net.Authenticator;
import java.net.PasswordAuthentication;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

public class JdbcQuery {
    public static void main(String[] args) {
        try {
            if (args.length != 3) {
                throw new IllegalArgumentException("usage: JdbcQuery <jdbc-url> <user> <expected-rows>");
            }
            int n = Integer.parseInt(args[2]);
            if (n < 1) {
                throw new IllegalArgumentException("expected-rows must be >= 1, got " + n);
            }
            socksAuthenticator();
            run(withTimeouts(args[0]), args[1], n);
        } catch (Throwable t) {
            // Print every cause (and SQLException's chained "next" exceptions).
            for (Throwable c = t; c != null; c = c.getCause()) {
                System.err.println((c == t ? "JDBC_FAIL " : "  caused by: ") + c);
                if (c instanceof SQLException s) {
                    for (SQLException x = s.getNextException(); x != null; x = x.getNextException()) {
                        System.err.println("  next: " + x);
                    }
                }
            }
            t.printStackTrace(System.err);
            System.exit(1);
        }
    }

    // The SOCKS5 username (the pool) and password (an API key), when set.
    static void socksAuthenticator() {
        String user = System.getProperty("tether.socks.username");
        if (user == null) {
            return;
        }
        String key = System.getenv("TETHER_SOCKS_PASSWORD");
        if (key == null || key.isEmpty()) {
            throw new IllegalArgumentException(
                    "-Dtether.socks.username is set but TETHER_SOCKS_PASSWORD (the API key) is not");
        }
        char[] password = key.toCharArray();
        Authenticator.setDefault(new Authenticator() {
            @Override
            protected PasswordAuthentication getPasswordAuthentication() {
                return "SOCKS5".equals(getRequestingProtocol())
                        ? new PasswordAuthentication(user, password)
                        : null;
            }
        });
    }

    // Adds a 10 s connect timeout and a 30 s socket timeout unless the URL sets them,
    // so a broken tunnel fails the test instead of hanging it. pgjdbc counts them
    // in seconds, MariaDB Connector/J in milliseconds.
    static String withTimeouts(String url) {
        StringBuilder u = new StringBuilder(url);
        String[] timeouts = url.startsWith("jdbc:mariadb:")
                ? new String[] {"connectTimeout=10000", "socketTimeout=30000"}
                : new String[] {"connectTimeout=10", "socketTimeout=30"};
        for (String p : timeouts) {
            String key = p.substring(0, p.indexOf('=') + 1);
            if (!url.contains(key)) {
                u.append(u.indexOf("?") < 0 ? '?' : '&').append(p);
            }
        }
        return u.toString();
    }

    static void run(String url, String user, int n) throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", user);
        try (Connection conn = DriverManager.getConnection(url, props)) {
            try (Statement st = conn.createStatement()) {
                st.execute("create temporary table jdbc_check (id integer primary key, v bigint not null)");
            }

            // Insert rows 1..n with v = id * 7 in one transaction, as a batch.
            long wantSum = 0;
            conn.setAutoCommit(false);
            try (PreparedStatement ps = conn.prepareStatement("insert into jdbc_check (id, v) values (?, ?)")) {
                for (int i = 1; i <= n; i++) {
                    ps.setInt(1, i);
                    ps.setLong(2, i * 7L);
                    ps.addBatch();
                    wantSum += i * 7L;
                }
                ps.executeBatch();
            }
            conn.commit();
            conn.setAutoCommit(true);

            // Read every row back (not just an aggregate) so real data crosses the wire.
            long rows = 0, sum = 0;
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("select id, v from jdbc_check order by id")) {
                while (rs.next()) {
                    rows++;
                    sum += rs.getLong(2);
                }
            }
            if (rows != n || sum != wantSum) {
                throw new IllegalStateException("read back rows=" + rows + " sum=" + sum
                        + ", inserted rows=" + n + " sum=" + wantSum);
            }

            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("select version()")) {
                if (!rs.next() || rs.getString(1) == null) {
                    throw new IllegalStateException("select version() returned no row");
                }
                System.out.println("server: " + rs.getString(1));
            }
            System.out.println("JDBC_OK rows=" + rows + " sum=" + sum);
        }
    }
}
