// One hop of a service chain for tracewire's tests in Java (JDK HttpServer and HttpURLConnection,
// uninstrumented, a thread pool serving one request per thread).
// GET /hop/<id> calls GET <next>/hop/<id> when a next hop is given, then answers "ok <id>".
// Prints "port N" once listening. Usage: java Hop.java HOST PORT [NEXT_URL]
import com.sun.net.httpserver.HttpServer;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.InetSocketAddress;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executors;

public class Hop {
    public static void main(String[] args) throws Exception {
        String next = args.length > 2 ? args[2] : null;
        // No connection reuse: every call is a new connection, as for the other hops.
        System.setProperty("http.keepAlive", "false");
        HttpServer server = HttpServer.create(new InetSocketAddress(args[0], Integer.parseInt(args[1])), 256);
        server.createContext("/", exchange -> {
            String path = exchange.getRequestURI().getPath();
            String rid = path.substring(path.lastIndexOf('/') + 1);
            int status = 200;
            if (next != null) {
                try {
                    HttpURLConnection c = (HttpURLConnection) new URL(next + "/hop/" + rid).openConnection();
                    try (InputStream in = c.getInputStream()) {
                        in.readAllBytes();
                    }
                    if (c.getResponseCode() != 200) {
                        status = 502;
                    }
                } catch (Exception e) {
                    status = 502;
                }
            }
            byte[] body = ("ok " + rid + "\n").getBytes(StandardCharsets.UTF_8);
            exchange.sendResponseHeaders(status, body.length);
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(body);
            }
        });
        server.setExecutor(Executors.newFixedThreadPool(32));
        server.start();
        System.out.println("port " + server.getAddress().getPort());
        System.out.flush();
    }
}
