// Two real authorization servers (node-oidc-provider), issuer A and issuer B, on loopback ports of the system's choosing,
// for tests/test_oidc_provider.py. Each issues, with client_credentials:
//   - JWT access tokens (RFC 9068) for the resource https://api.test/jwt,
//   - opaque access tokens for https://api.test/opaque, answered at its introspection endpoint,
// both carrying the custom claim org_id of the client (extraTokenClaims). Both sign with a kid
// of the same name, each with its own key. POST /admin/rotate replaces an issuer's signing key
// (a new kid; the old key is gone from its JWKS). Each issuer's private JWKS is written to
// OUT/<name>.private.jwks.json, so a test can forge what a holder of one issuer's key could sign.
//
// usage: node providers.mjs OUT   (prints one JSON line, with each issuer's URL, when both listen)

import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';

import Provider from 'oidc-provider';

const [out] = process.argv.slice(2);
const RESOURCES = {
  'https://api.test/jwt': { accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } },
  'https://api.test/opaque': { accessTokenFormat: 'opaque' },
};

const clients = [
  { client_id: 'acme-app', client_secret: 'acme-secret', org_id: 'acme' },
  { client_id: 'evil-app', client_secret: 'evil-secret', org_id: 'evil' },
  { client_id: 'gateway', client_secret: 'gateway-secret' }, // introspects
].map((client) => ({ ...client, grant_types: ['client_credentials'], redirect_uris: [], response_types: [] }));

function signingKey(kid) {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', alg: 'RS256' };
}

function provider(issuer, key) {
  return new Provider(issuer, {
    clients,
    jwks: { keys: [key] },
    extraClientMetadata: { properties: ['org_id'] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => undefined,
        useGrantedResource: async () => false,
        getResourceServerInfo: async (ctx, resource) => {
          const server = RESOURCES[resource];
          if (!server) throw new Provider.errors.InvalidTarget();
          return { scope: 'reports:read reports:write', audience: 'payments-api', accessTokenTTL: 600, ...server };
        },
      },
    },
    extraTokenClaims: async (ctx) => (ctx.oidc.client?.org_id ? { org_id: ctx.oidc.client.org_id } : undefined),
  });
}

class Issuer {
  constructor(name) {
    this.name = name;
    this.generation = 1;
    this.server = http.createServer((req, res) => {
      if (req.method === 'POST' && req.url === '/admin/rotate') {
        this.generation += 1;
        this.start();
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ kid: this.kid }));
        return;
      }
      this.handle(req, res);
    });
  }

  // a port of the system's choosing (no race with another test for a port picked in advance),
  // then the provider, whose issuer URL names that port
  async listen() {
    await new Promise((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${this.server.address().port}`;
    this.start();
  }

  // a new signing key and a provider holding only it: a rotation whose old key is retired
  start() {
    this.kid = `k${this.generation}`;
    const key = signingKey(this.kid);
    writeFileSync(path.join(out, `${this.name}.private.jwks.json`), JSON.stringify({ keys: [key] }));
    this.handle = provider(this.url, key).callback();
  }
}

const issuers = [new Issuer('a'), new Issuer('b')];
await Promise.all(issuers.map((issuer) => issuer.listen()));
console.log(JSON.stringify({ ready: true, issuers: issuers.map(({ name, url, kid }) => ({ name, url, kid })) }));
