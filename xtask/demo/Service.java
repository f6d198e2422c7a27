// A leaf service of the tracewire demo in Java (JDK HttpServer): ordinary and uninstrumented.
// Usage: java Service.java WORK_MS. Prints "port N" once listening on 127.0.0.1.
import com.sun.net.httpserver.HttpServer;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executors;

public class Service {
    public static void main(String[] args) throws Exception {
        long workMs = Long.parseLong(args[0]);
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 64);
        server.createContext("/", exchange -> {
            try {
                Thread.sleep(workMs);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            byte[] body = "{\"ok\":true}".getBytes(StandardCharsets.UTF_8);
            exchange.getResponseHeaders().set("Content-Type", "application/json");
            exchange.sendResponseHeaders(200, body.length);
            try (OutputStream out = exchange.getResponseBody()) {
                out.write(body);
            }
        });
        // One thread per request, as Java services usually run.
        server.setExecutor(Executors.newFixedThreadPool(8));
        server.start();
        System.out.println("port " + server.getAddress().getPort());
        System.out.flush();
    }
}
