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

// Test extension: token introspection (RFC 7662), which the real auth API serves at /oauth/introspect
// and the emulator lacks. It answers from the tokens the emulator issued: active with their scope,
// client and expiry, else {"active": false}. POST /_test/oauth/expire {"token"} ends a token's life
// early (the emulator's own last two days), so that a test can present an expired one.
const store = mock._oauth2.store;
const issuedAt = new Map();
const addToken = store.addToken.bind(store);
store.addToken = (token, clientId) => {
  issuedAt.set(token.access_token, Date.now());
  addToken(token, clientId);
};
const expiredEarly = new Set();
mock.app.register(async (instance) => {
  instance.addContentTypeParser("application/x-www-form-urlencoded", { parseAs: "string" }, (_request, body, done) =>
    done(null, Object.fromEntries(new URLSearchParams(body))),
  );
  instance.post("/oauth/introspect", async (request, reply) => {
    if (!String(request.headers.authorization ?? "").startsWith("Basic ")) {
      return reply.code(401).send({ statusCode: 401, message: "Please provide valid client credentials using HTTP Basic Authentication.", errors: [{ code: "invalid_client", message: "Please provide valid client credentials using HTTP Basic Authentication." }] });
    }
    const value = request.body?.token ?? request.query?.token;
    const token = store.tokens.find((t) => t.access_token === value);
    const expiresAt = token ? issuedAt.get(token.access_token) + token.expires_in * 1000 : 0;
    if (!token || expiredEarly.has(value) || Date.now() >= expiresAt) {
      return { active: false };
    }
    return { active: true, scope: token.scope, exp: Math.floor(expiresAt / 1000), client_id: store.getClientIdForToken(value) ?? "" };
  });
  instance.post("/_test/oauth/expire", async (request) => {
    expiredEarly.add(request.body?.token);
    return { expired: true };
  });
});

await mock.app.listen({ port, host });
console.log(`listening ${mock.app.server.address().port}`);
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => mock.app.close().then(() => process.exit(0)));
}
