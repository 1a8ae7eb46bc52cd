/* placeholder: being written by the store_sqlite owner */
