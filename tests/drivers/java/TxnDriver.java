// pgjdbc through pg-iam-proxy in transaction mode, compiled and run by tests/txn_drivers.rs
// with the JDBC URL (pointing at the proxy), the number of clients, of rounds, and a table
// (client int, n int) it may insert into as arguments. Clients run at once (a thread and a connection each); with prepareThreshold=1
// in the URL every PreparedStatement is server-prepared from its second use as S_<n> (the
// same names on every connection, with texts that differ per client) and used across
// transactions: autocommit, explicit (setAutoCommit(false) ... commit), and a batch of
// inserts. Prints one JSON line: per client, the backend pids it saw, the results that were
// not its own, and its batch's row count; exits 1 (reason on stderr) when a step fails.
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.util.ArrayList;
import java.util.List;
import java.util.TreeSet;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

public class TxnDriver {
    static String TABLE;
    // Every client starts each round at once, so they contend for the server connections.
    static CyclicBarrier START;

    public static void main(String[] args) throws Exception {
        String url = args[0];
        int clients = Integer.parseInt(args[1]);
        int rounds = Integer.parseInt(args[2]);
        TABLE = args[3];
        START = new CyclicBarrier(clients);
        ExecutorService pool = Executors.newFixedThreadPool(clients);
        List<Future<String>> jobs = new ArrayList<>();
        for (int i = 0; i < clients; i++) {
            final int id = i;
            jobs.add(pool.submit(() -> client(url, id, rounds)));
        }
        List<String> results = new ArrayList<>();
        for (Future<String> job : jobs) {
            results.add(job.get(120, TimeUnit.SECONDS));
        }
        pool.shutdown();
        System.out.println("{\"clients\": [" + String.join(", ", results) + "]}");
    }

    static String client(String url, int i, int rounds) throws Exception {
        TreeSet<Integer> pids = new TreeSet<>();
        List<String> wrong = new ArrayList<>();
        int batched;
        String floatDigits;
        try (Connection c = DriverManager.getConnection(url);
                PreparedStatement sum = c.prepareStatement("SELECT ?::int + " + i + ", pg_backend_pid()");
                PreparedStatement text = c.prepareStatement("SELECT 'j" + i + "-' || ?::text");
                PreparedStatement insert = c.prepareStatement("INSERT INTO " + TABLE + " VALUES (?, ?)");
                PreparedStatement count = c.prepareStatement(
                        "SELECT count(*), sum(n) FROM " + TABLE + " WHERE client = ?")) {
            for (int r = 0; r < rounds; r++) {
                START.await(60, TimeUnit.SECONDS);
                // Autocommit: each statement a transaction of its own.
                sum.setInt(1, r);
                try (ResultSet rs = sum.executeQuery()) {
                    rs.next();
                    pids.add(rs.getInt(2));
                    if (rs.getInt(1) != r + i) wrong.add("\"sum " + r + "\"");
                }
                // An explicit transaction, with a batch.
                c.setAutoCommit(false);
                text.setInt(1, r);
                try (ResultSet rs = text.executeQuery()) {
                    rs.next();
                    if (!rs.getString(1).equals("j" + i + "-" + r)) wrong.add("\"text " + r + "\"");
                }
                for (int n = 0; n < 3; n++) {
                    insert.setInt(1, i);
                    insert.setInt(2, r);
                    insert.addBatch();
                }
                for (int n : insert.executeBatch()) {
                    if (n != 1) wrong.add("\"batch " + r + "\"");
                }
                sum.setInt(1, r);
                try (ResultSet rs = sum.executeQuery()) {
                    rs.next();
                    pids.add(rs.getInt(2));
                }
                c.commit();
                c.setAutoCommit(true);
            }
            count.setInt(1, i);
            try (ResultSet rs = count.executeQuery()) {
                rs.next();
                batched = rs.getInt(1);
                long total = rs.getLong(2);
                if (total != 3L * rounds * (rounds - 1) / 2) wrong.add("\"batch total " + total + "\"");
            }
            // The setting pgjdbc makes at connect, on whichever connection this runs.
            try (java.sql.Statement st = c.createStatement();
                    ResultSet rs = st.executeQuery("SHOW extra_float_digits")) {
                rs.next();
                floatDigits = rs.getString(1);
            }
        }
        return "{\"client\": " + i + ", \"pids\": " + pids.toString() + ", \"wrong\": " + wrong
                + ", \"batched\": " + batched + ", \"extra_float_digits\": \"" + floatDigits + "\"}";
    }
}
