// The commercetools emulator, on 127.0.0.1 unless told otherwise (its own runServer binds every interface).
// Usage: node server.mjs PORT [HOST]  -- prints "listening PORT" once it accepts connections.
import { CommercetoolsMock } from "@labdigital/commercetools-mock";

const port = Number(process.argv[2] ?? 0);
const host = process.argv[3] ?? "127.0.0.1"; // the compose stack passes 0.0.0.0
const mock = new CommercetoolsMock({ enableAuthentication: true, validateCredentials: false, silent: true });
await mock.app.listen({ port, host });
console.log(`listening ${mock.app.server.address().port}`);
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => mock.app.close().then(() => process.exit(0)));
}
