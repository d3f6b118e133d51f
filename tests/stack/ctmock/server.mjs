// The commercetools emulator, on 127.0.0.1 unless told otherwise (its own runServer binds every interface).
// Usage: node server.mjs PORT [HOST]  -- prints "listening PORT" once it accepts connections.
import { AsyncLocalStorage } from "node:async_hooks";
import { CommercetoolsMock } from "@labdigital/commercetools-mock";

const port = Number(process.argv[2] ?? 0);
const host = process.argv[3] ?? "127.0.0.1"; // the compose stack passes 0.0.0.0
const mock = new CommercetoolsMock({ enableAuthentication: true, validateCredentials: false, silent: true });

// Its storage sorts query results, but its HTTP layer drops the `sort` parameter, so keyset paging
// (`where=id > "..."&sort=id asc`, as the real API documents) would skip resources. The request's
// `sort` is handed on to the storage here, as the real API applies it.
const requestSort = new AsyncLocalStorage();
mock.app.addHook("onRequest", (request, _reply, done) => requestSort.run(request.query?.sort, done));
const query = mock._storage.query.bind(mock._storage);
mock._storage.query = (projectKey, typeId, params) =>
  query(projectKey, typeId, { ...params, sort: params.sort ?? requestSort.getStore() });

await mock.app.listen({ port, host });
console.log(`listening ${mock.app.server.address().port}`);
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => mock.app.close().then(() => process.exit(0)));
}
