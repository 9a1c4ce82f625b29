// Managed by mcpops.deploy (roles/nginx/files/mcpops_principal.js).
//
// $mcpops_principal: the key nginx hashes (hash ... consistent) to send every request of one principal
// to the same instance of a stdio server with isolation per_principal, whose children hold each
// principal's state. It is a digest of the bearer token's iss and sub, read WITHOUT checking the
// signature: it only chooses an instance, and that instance verifies the token and keys its children
// by the verified principal, so a forged claim chooses nothing but which instance answers 401.
// Anything unusable (no token, a header over MAX_HEADER, a payload that is not a JSON object, a sub
// that is not a string) falls back to the client address. It never throws: njs would leave the
// variable empty and log an exception for every such request.
//
// njs 0.7.9 (Debian 12) and later: no async function (js_set handlers are synchronous).
import crypto from 'crypto';

// Bound of the work per request: nginx accepts header lines up to large_client_header_buffers (8k).
var MAX_HEADER = 8192;
var BEARER = /^bearer[ \t]+/i;

function claims(header) {
    if (typeof header !== 'string' || header.length > MAX_HEADER || !BEARER.test(header)) {
        return null;
    }
    var parts = header.replace(BEARER, '').trim().split('.');
    if (parts.length !== 3 || !/^[A-Za-z0-9_-]+$/.test(parts[1])) {
        return null;
    }
    var payload = JSON.parse(Buffer.from(parts[1], 'base64url').toString());
    return (payload !== null && typeof payload === 'object' && !Array.isArray(payload)) ? payload : null;
}

function principal(r) {
    try {
        var c = claims(r.headersIn.Authorization);
        if (c !== null && typeof c.sub === 'string' && c.sub.length > 0) {
            var iss = typeof c.iss === 'string' ? c.iss : '';
            return 'p:' + crypto.createHash('sha256').update(iss + '\n' + c.sub).digest('hex');
        }
    } catch (e) {
        // a payload that is not base64url JSON: the client address below
    }
    return 'a:' + r.remoteAddress;
}

export default {principal};
