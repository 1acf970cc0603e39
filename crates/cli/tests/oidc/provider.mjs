// A real OpenID provider for crates/cli/tests/oidc.rs: the certified `oidc-provider`
// package (installed under target/oidc-provider by scripts/install-oidc-provider), with one
// confidential client for the node under test. Only what a test cannot do through a browser
// is added: the login and consent screens are skipped (the account to sign in as is chosen
// with GET /test/account?id=...), and GET /test/tamper?aud=1 makes the token endpoint hand
// out ID tokens for another audience, properly signed with the provider's own key (a
// provider or a man in the middle confusing clients); GET /test/tamper?groups=0 hands out
// ID tokens without the group claim, which the userinfo endpoint still gives (providers that
// keep ID tokens small do this).
//
// Usage: node provider.mjs REDIRECT_URI CLIENT_SECRET; prints "port N" once it listens.
// With TLS_CERT and TLS_KEY (PEM files) in the environment it serves https.
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const [redirectUri, clientSecret] = process.argv.slice(2);
const accounts = {
  alice: { sub: 'alice-0001', preferred_username: 'alice', detente_groups: ['duty-supervisors', 'staff'] },
  // "bob" is also a local account on the node under test.
  bob: { sub: 'bob-0002', preferred_username: 'bob', detente_groups: ['auditors'] },
  carol: { sub: 'carol-0003', preferred_username: 'carol', detente_groups: ['staff'] },
};
let account = 'alice';
let tamperAudience = false;
let stripGroups = false;
const tls = process.env.TLS_CERT && {
  cert: fs.readFileSync(process.env.TLS_CERT),
  key: fs.readFileSync(process.env.TLS_KEY),
};

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'test-key', alg: 'RS256', use: 'sig' };

const server = tls ? https.createServer(tls) : http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const provider = new Provider(`${tls ? 'https' : 'http'}://127.0.0.1:${port}`, {
    clients: [{
      client_id: 'detente-node',
      client_secret: clientSecret,
      redirect_uris: [redirectUri],
      // Where the node's logout comes back to (RP-Initiated Logout).
      post_logout_redirect_uris: [redirectUri.replace('/login/oidc/callback', '/login')],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks: { keys: [jwk] },
    pkce: { required: () => true },
    claims: { openid: ['sub'], profile: ['preferred_username', 'detente_groups'] },
    // The profile claims in the ID token itself, not only at the userinfo endpoint.
    conformIdTokenClaims: false,
    cookies: { keys: ['oidc-test-cookie-key'] },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    findAccount: async (ctx, id) => accounts[id] && {
      accountId: id,
      claims: async () => accounts[id],
    },
  });
  provider.use(async (ctx, next) => {
    if (ctx.path === '/test/account') {
      account = String(ctx.query.id);
      ctx.body = 'ok';
      return;
    }
    if (ctx.path === '/test/tamper') {
      if (ctx.query.aud) tamperAudience = ctx.query.aud === '1';
      if (ctx.query.groups) stripGroups = ctx.query.groups === '0';
      ctx.body = 'ok';
      return;
    }
    if (ctx.path.startsWith('/interaction/')) {
      // The user signs in as `account` and consents at once.
      const details = await provider.interactionDetails(ctx.req, ctx.res);
      const grant = new provider.Grant({ accountId: account, clientId: details.params.client_id });
      grant.addOIDCScope(details.params.scope);
      const grantId = await grant.save();
      await provider.interactionFinished(ctx.req, ctx.res, {
        login: { accountId: account },
        consent: { grantId },
      }, { mergeWithLastSubmission: false });
      return;
    }
    await next();
    if ((tamperAudience || stripGroups) && ctx.path === '/token' && ctx.body && ctx.body.id_token) {
      const claims = jose.decodeJwt(ctx.body.id_token);
      if (tamperAudience) claims.aud = 'another-client';
      if (stripGroups) delete claims.detente_groups;
      const key = await jose.importJWK(jwk, 'RS256');
      ctx.body = {
        ...ctx.body,
        id_token: await new jose.SignJWT(claims)
          .setProtectedHeader({ alg: 'RS256', kid: 'test-key', typ: 'JWT' })
          .sign(key),
      };
    }
  });
  server.on('request', provider.callback());
  console.log(`port ${port}`);
});
