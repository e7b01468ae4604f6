// pgJDBC through Sluice in transaction mode. pgJDBC switches to named server-side
// prepared statements after prepareThreshold (5) executions of a statement, and
// batches inserts with executeBatch. Threads keep their connections open, many on a
// small pool; every result is checked. Then Statement.cancel() of a pg_sleep(10)
// must end it within 1 s.
//
// Usage: java -cp postgresql.jar:. PgJdbcClients URL USER PASSWORD THREADS ROUNDS
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicReference;

public class PgJdbcClients {
    static Connection connect(String url, String user, String password) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        p.setProperty("prepareThreshold", "5");
        return DriverManager.getConnection(url, p);
    }

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    static void client(String url, String user, String password, int n, int rounds) throws Exception {
        try (Connection c = connect(url, user, password)) {
            PreparedStatement add = c.prepareStatement("SELECT ?::int + " + (n + 1));
            PreparedStatement label = c.prepareStatement("SELECT ?::text || '-' || ?::int");
            for (int i = 0; i < rounds; i++) {
                add.setInt(1, i);
                try (ResultSet r = add.executeQuery()) {
                    check(r.next() && r.getInt(1) == i + n + 1, "thread " + n + " round " + i + ": add");
                }
                label.setString(1, "t" + n);
                label.setInt(2, i);
                try (ResultSet r = label.executeQuery()) {
                    check(r.next() && r.getString(1).equals("t" + n + "-" + i), "thread " + n + " round " + i + ": label");
                }
            }
            // A batch of inserts in a transaction.
            c.setAutoCommit(false);
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO jdbc_rows (thread, k, v) VALUES (?, ?, ?)")) {
                for (int k = 0; k < 50; k++) {
                    ins.setInt(1, n);
                    ins.setInt(2, k);
                    ins.setString(3, n + ":" + k);
                    ins.addBatch();
                }
                int[] counts = ins.executeBatch();
                check(counts.length == 50, "thread " + n + ": batch counts");
            }
            c.commit();
            c.setAutoCommit(true);
            try (PreparedStatement q = c.prepareStatement("SELECT count(*), min(v), max(k) FROM jdbc_rows WHERE thread = ?")) {
                q.setInt(1, n);
                try (ResultSet r = q.executeQuery()) {
                    check(r.next() && r.getInt(1) == 50 && r.getString(2).equals(n + ":0") && r.getInt(3) == 49,
                          "thread " + n + ": batch rows");
                }
            }
        }
    }

    public static void main(String[] args) throws Exception {
        String url = args[0], user = args[1], password = args[2];
        int threads = Integer.parseInt(args[3]), rounds = Integer.parseInt(args[4]);
        try (Connection c = connect(url, user, password); Statement s = c.createStatement()) {
            s.execute("CREATE TABLE IF NOT EXISTS jdbc_rows (thread int, k int, v text, PRIMARY KEY (thread, k))");
            s.execute("TRUNCATE jdbc_rows");
        }
        AtomicReference<Throwable> failure = new AtomicReference<>();
        List<Thread> all = new ArrayList<>();
        for (int n = 0; n < threads; n++) {
            final int id = n;
            Thread t = new Thread(() -> {
                try {
                    client(url, user, password, id, rounds);
                } catch (Throwable e) {
                    failure.compareAndSet(null, e);
                }
            });
            t.start();
            all.add(t);
        }
        for (Thread t : all) {
            t.join();
        }
        if (failure.get() != null) {
            failure.get().printStackTrace();
            System.exit(1);
        }

        // Statement.cancel() of a running pg_sleep(10).
        try (Connection c = connect(url, user, password); Statement s = c.createStatement()) {
            AtomicReference<SQLException> ended = new AtomicReference<>();
            long[] endedAt = new long[1];
            Thread sleeper = new Thread(() -> {
                try {
                    s.execute("SELECT pg_sleep(10)");
                } catch (SQLException e) {
                    ended.set(e);
                }
                endedAt[0] = System.nanoTime();
            });
            sleeper.start();
            Thread.sleep(500);
            long cancelledAt = System.nanoTime();
            s.cancel();
            sleeper.join(5000);
            check(!sleeper.isAlive(), "pg_sleep(10) still running 5 s after cancel()");
            check(ended.get() != null && "57014".equals(ended.get().getSQLState()),
                  "cancel: expected SQLSTATE 57014, got " + (ended.get() == null ? "success" : ended.get().getSQLState()));
            double ms = (endedAt[0] - cancelledAt) / 1e6;
            check(ms < 1000, "cancel took " + ms + " ms");
            System.out.printf("cancel returned in %.0f ms%n", ms);
            // The connection works after the cancel.
            try (ResultSet r = s.executeQuery("SELECT 1")) {
                check(r.next() && r.getInt(1) == 1, "query after cancel");
            }
        }
        System.out.println("ok");
    }
}
