/** The prefix of every setting's environment variable (`BEARER_PROXY_CLIENT_ID`), for messages that name one. */
export const PREFIX = 'BEARER_PROXY_'
