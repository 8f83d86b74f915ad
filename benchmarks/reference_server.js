// A minimal HTTP server for benchmarks/throughput.py: it answers every request,
// once its body has arrived, with one fixed create reply (200, Content-Length),
// and checks nothing. It costs far less CPU per request than the sandbox, so a
// client measured against it is measured, not the server. Bound to 127.0.0.1.
"use strict";
const http = require("http");

const reply = Buffer.from(JSON.stringify({
  message: {
    first_name: "Ada", last_name: "Lovelace", email: "ada@example.com",
    address_one: "1 Main St.", address_two: "Suite 1000", city: "Chicago", state: "IL",
    zip: "60601", country: "United States", date_of_birth: "1985-09-02",
    id_number_type: "ssn", id_number: "100000001", signed_timestamp: 1603378501286,
    prefunded: false, metadata: { source: "benchmark" }, platform_code: "PLAT01",
    participant_code: "P0000001", risk_rating: null,
  },
}));

const server = http.createServer((request, response) => {
  request.on("data", () => {});
  request.on("end", () => {
    response.writeHead(200, { "Content-Type": "application/json", "Content-Length": reply.length });
    response.end(reply);
  });
});
server.keepAliveTimeout = 60000;
server.listen(0, "127.0.0.1", () => {
  console.log(`reference server at http://127.0.0.1:${server.address().port}`);
});
